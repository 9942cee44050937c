//! Reading a LoRA file in any of the three namings, every problem reported at once.
use super::*;
use crate::io::safetensors::SafeTensorsFile;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// The tensors found for one module.
#[derive(Default)]
struct Parts {
    down: Option<String>,
    up: Option<String>,
    alpha: Option<String>,
}

/// Alpha settings from PEFT's `lora_adapter_metadata` for one component.
struct PeftAlpha {
    alpha: Option<f64>,
    /// (regex over the module path, alpha), in the order PEFT tries them.
    pattern: Vec<(regex::Regex, f64)>,
    rslora: bool,
}

impl PeftAlpha {
    fn parse(metadata: &BTreeMap<String, String>, c: Component) -> Result<Self> {
        let json: Value = match metadata.get("lora_adapter_metadata") {
            Some(s) => serde_json::from_str(s).context("`lora_adapter_metadata` is not JSON")?,
            None => Value::Null,
        };
        // diffusers prefixes each field with the component; accept bare fields as well.
        let field = |name: &str| json.get(format!("{}.{name}", c.diffusers_prefix())).or_else(|| json.get(name)).filter(|v| !v.is_null());
        let mut pattern = Vec::new();
        if let Some(Value::Object(p)) = field("alpha_pattern") {
            for (k, v) in p {
                // PEFT matches a pattern key against the module path or any dotted suffix of it.
                let re = regex::Regex::new(&format!(r"^(?:.*\.)?(?:{k})$"))
                    .with_context(|| format!("alpha_pattern key `{k}` is not a regex"))?;
                let a = v.as_f64().with_context(|| format!("alpha_pattern `{k}` is not a number"))?;
                pattern.push((re, a));
            }
        }
        Ok(Self {
            alpha: field("lora_alpha").and_then(Value::as_f64),
            pattern,
            rslora: field("use_rslora").and_then(Value::as_bool).unwrap_or(false),
        })
    }

    fn alpha(&self, module: &str, rank: usize) -> f32 {
        let a = self.pattern.iter().find(|(re, _)| re.is_match(module)).map(|(_, a)| *a).or(self.alpha);
        // As diffusers: without an alpha the scale is 1 (alpha = rank).
        let a = a.unwrap_or(rank as f64);
        // rsLoRA scales by alpha / sqrt(rank); store the alpha that gives that scale as alpha / rank.
        if self.rslora { (a * (rank as f64).sqrt()) as f32 } else { a as f32 }
    }
}

/// Reads a LoRA in any of the three namings. All problems (unknown keys, kohya names that match no
/// module, modules the model lacks, a down without an up, mismatched ranks) are reported together.
pub fn read(path: &Path, modules: &KnownModules) -> Result<LoraFile> {
    let file = SafeTensorsFile::open(path)?;
    let mut problems: Vec<String> = Vec::new();

    // kohya name → dotted path; `None` marks two modules that underscore to the same name.
    let mut unders: HashMap<(Component, String), Option<&str>> = HashMap::new();
    let mut dotted: HashMap<Component, BTreeSet<&str>> = HashMap::new();
    for c in [Component::Unet, Component::TextEncoder] {
        for m in modules.list(c) {
            unders.entry((c, m.replace('.', "_"))).and_modify(|e| *e = None).or_insert(Some(m.as_str()));
            dotted.entry(c).or_default().insert(m);
        }
    }

    let mut formats: BTreeMap<&'static str, Format> = BTreeMap::new();
    let mut parts: BTreeMap<(Component, String), Parts> = BTreeMap::new();
    for key in file.names() {
        let Some((format, c, raw, role)) = classify(key) else {
            problems.push(format!("`{key}`: not a LoRA tensor name of a known format"));
            continue;
        };
        formats.insert(format.name(), format);
        let module = if format == Format::Kohya {
            match unders.get(&(c, raw.clone())) {
                Some(Some(m)) => m.to_string(),
                Some(None) => {
                    problems.push(format!("`{key}`: ambiguous, several modules underscore to `{raw}`"));
                    continue;
                }
                None => {
                    problems.push(format!("`{key}`: `{raw}` matches no {} module", component_label(c)));
                    continue;
                }
            }
        } else if dotted.get(&c).is_some_and(|s| s.contains(raw.as_str())) {
            raw
        } else {
            problems.push(format!("`{key}`: the {} has no module `{raw}`", component_label(c)));
            continue;
        };
        let p = parts.entry((c, module)).or_default();
        let slot = match role {
            Role::Down => &mut p.down,
            Role::Up => &mut p.up,
            Role::Alpha => &mut p.alpha,
        };
        if let Some(prev) = slot.replace(key.clone()) {
            problems.push(format!("`{key}` and `{prev}`: two tensors for the same part of one module"));
        }
    }
    if formats.len() > 1 {
        let names: Vec<&str> = formats.keys().copied().collect();
        problems.push(format!("the keys mix several namings ({})", names.join(", ")));
    }
    let format = formats.values().next().copied();

    let peft_alpha = |c| PeftAlpha::parse(file.metadata(), c);
    let peft_alpha = if format == Some(Format::Peft) {
        match (peft_alpha(Component::Unet), peft_alpha(Component::TextEncoder)) {
            (Ok(u), Ok(t)) => Some((u, t)),
            (Err(e), _) | (_, Err(e)) => {
                problems.push(format!("metadata: {e:#}"));
                None
            }
        }
    } else {
        None
    };

    let mut entries = Vec::new();
    for ((component, module), p) in parts {
        let (down_key, up_key) = match (&p.down, &p.up) {
            (Some(d), Some(u)) => (d, u),
            (Some(k), None) => {
                problems.push(format!("`{k}`: down weight without an up weight"));
                continue;
            }
            (None, Some(k)) => {
                problems.push(format!("`{k}`: up weight without a down weight"));
                continue;
            }
            (None, None) => {
                problems.push(format!("`{}`: alpha without weights", p.alpha.as_deref().unwrap_or("?")));
                continue;
            }
        };
        let loaded = (|| -> Result<LoraEntry> {
            let (ds, down) = file.f32_finite(down_key)?;
            let (us, up) = file.f32_finite(up_key)?;
            let conv = match (ds.as_slice(), us.as_slice()) {
                ([_, _], [_, _]) => false,
                ([_, _, 1, 1], [_, _, 1, 1]) => true,
                _ => bail!("`{down_key}` {ds:?} / `{up_key}` {us:?}: only linear and 1x1-conv LoRAs are supported"),
            };
            let (rank, in_features, out_features) = (ds[0], ds[1], us[0]);
            if us[1] != rank || rank == 0 {
                bail!("`{down_key}` {ds:?} / `{up_key}` {us:?}: the ranks of down and up differ");
            }
            let alpha = match format {
                Some(Format::Kohya) => match &p.alpha {
                    Some(k) => {
                        let (_, v) = file.f32_finite(k)?;
                        if v.len() != 1 {
                            bail!("`{k}`: alpha holds {} values, not 1", v.len());
                        }
                        // As kohya: alpha 0 means "no scaling" (alpha = rank).
                        if v[0] == 0.0 { rank as f32 } else { v[0] }
                    }
                    None => rank as f32,
                },
                Some(Format::Peft) => match &peft_alpha {
                    Some((u, t)) => if component == Component::Unet { u } else { t }.alpha(&module, rank),
                    None => rank as f32,
                },
                // The processor naming stored no alpha: its scale was 1.
                _ => rank as f32,
            };
            if !alpha.is_finite() {
                bail!("`{module}`: alpha {alpha} is not a finite number");
            }
            Ok(LoraEntry { component, module: module.clone(), rank, in_features, out_features, conv, down, up, alpha })
        })();
        match loaded {
            Ok(e) => entries.push(e),
            Err(e) => problems.push(format!("{e:#}")),
        }
    }

    if !problems.is_empty() {
        bail!("{}: cannot read the LoRA ({}):\n  {}", path.display(), count(problems.len()), problems.join("\n  "));
    }
    if entries.is_empty() {
        bail!("{}: holds no LoRA tensors", path.display());
    }
    Ok(LoraFile { entries, metadata: file.metadata().clone(), format })
}
