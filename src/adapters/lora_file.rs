//! LoRA files on disk: reading the three namings in use for Stable Diffusion 1.x (kohya /
//! AUTOMATIC1111, PEFT / diffusers, and diffusers' older attention-processor naming) into one data
//! model, and writing the kohya and PEFT forms. Pure data in, pure data out: no model code here;
//! the caller checks the shapes against the model (`in_features`, `out_features`).
//!
//! One file on purpose, though long: the three namings are one mapping (module path <-> key) read
//! in both directions, and every problem of a file is collected and reported at once, which
//! needs the readers side by side.
use crate::io::safetensors::{self, OwnedTensor, SafeTensorsFile, StoreAs};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// Which model a LoRA branch sits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    Unet,
    TextEncoder,
}

impl Component {
    /// The prefix of PEFT / diffusers keys and of the `lora_adapter_metadata` fields.
    pub fn diffusers_prefix(self) -> &'static str {
        match self {
            Component::Unet => "unet",
            Component::TextEncoder => "text_encoder",
        }
    }
    /// The prefix of kohya keys.
    pub fn kohya_prefix(self) -> &'static str {
        match self {
            Component::Unet => "lora_unet",
            Component::TextEncoder => "lora_te",
        }
    }
}

/// The naming a file was written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `lora_unet_<module_underscored>.lora_down.weight` / `.lora_up.weight` / `.alpha`.
    Kohya,
    /// `unet.<module>.lora_A.weight` / `.lora_B.weight`, alpha in `lora_adapter_metadata`.
    Peft,
    /// `unet.<block>.processor.to_q_lora.down.weight` (diffusers before PEFT); read only.
    DiffusersProcessor,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Kohya => "kohya",
            Format::Peft => "peft",
            Format::DiffusersProcessor => "diffusers-processor",
        }
    }
}

/// One low-rank branch: `delta W = (alpha / rank) · up · down`.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraEntry {
    pub component: Component,
    /// The module path as `named_modules()` spells it, e.g.
    /// `down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q` or
    /// `text_model.encoder.layers.0.self_attn.q_proj`.
    pub module: String,
    pub rank: usize,
    pub in_features: usize,
    pub out_features: usize,
    /// A 1x1 convolution: on disk `down` is `[rank, in, 1, 1]` and `up` is `[out, rank, 1, 1]`.
    pub conv: bool,
    /// A, `[rank, in]` row-major (PyTorch layout).
    pub down: Vec<f32>,
    /// B, `[out, rank]` row-major (PyTorch layout).
    pub up: Vec<f32>,
    pub alpha: f32,
}

impl LoraEntry {
    pub fn down_shape(&self) -> Vec<usize> {
        let mut s = vec![self.rank, self.in_features];
        if self.conv {
            s.extend([1, 1]);
        }
        s
    }
    pub fn up_shape(&self) -> Vec<usize> {
        let mut s = vec![self.out_features, self.rank];
        if self.conv {
            s.extend([1, 1]);
        }
        s
    }
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }
    /// The last part of the module path that names the layer kind: `to_q`, `to_out.0`, `q_proj`.
    pub fn leaf(&self) -> &str {
        leaf_name(&self.module)
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoraFile {
    /// Sorted by (component, module).
    pub entries: Vec<LoraEntry>,
    /// The file's safetensors metadata as read; on writing, extra keys the caller wants stored.
    pub metadata: BTreeMap<String, String>,
    /// The naming the file was read from; `None` for a LoRA built in memory.
    pub format: Option<Format>,
}

/// The real module paths of the model, needed because kohya names replace every `.` by `_`, which
/// only the model's own module list can undo. Every read module is also checked against it.
#[derive(Clone, Debug, Default)]
pub struct KnownModules {
    pub unet: Vec<String>,
    pub text_encoder: Vec<String>,
}

impl KnownModules {
    fn list(&self, c: Component) -> &[String] {
        match c {
            Component::Unet => &self.unet,
            Component::TextEncoder => &self.text_encoder,
        }
    }
}

/// The three roles a tensor plays in a branch.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Down,
    Up,
    Alpha,
}

/// Classifies one tensor name as (format, component, module as written, role). For kohya the
/// module is still underscored; `None` when no known naming fits.
pub fn classify(key: &str) -> Option<(Format, Component, String, Role)> {
    for c in [Component::Unet, Component::TextEncoder] {
        if let Some(rest) = key.strip_prefix(c.kohya_prefix()).and_then(|r| r.strip_prefix('_')) {
            let (name, suffix) = rest.split_once('.')?;
            let role = match suffix {
                "lora_down.weight" => Role::Down,
                "lora_up.weight" => Role::Up,
                "alpha" => Role::Alpha,
                _ => return None,
            };
            return Some((Format::Kohya, c, name.to_string(), role));
        }
    }
    // Dotted namings; a key without a component prefix belongs to the UNet (older diffusers files).
    let (c, rest) = if let Some(r) = key.strip_prefix("unet.") {
        (Component::Unet, r)
    } else if let Some(r) = key.strip_prefix("text_encoder.") {
        (Component::TextEncoder, r)
    } else {
        (Component::Unet, key)
    };
    for (suffix, format, role) in [
        (".lora_A.weight", Format::Peft, Role::Down),
        (".lora_B.weight", Format::Peft, Role::Up),
        // diffusers' text-encoder patching before PEFT.
        (".lora_linear_layer.down.weight", Format::DiffusersProcessor, Role::Down),
        (".lora_linear_layer.up.weight", Format::DiffusersProcessor, Role::Up),
    ] {
        if let Some(m) = rest.strip_suffix(suffix).filter(|m| !m.is_empty()) {
            return Some((format, c, m.to_string(), role));
        }
    }
    // `<block>.processor.to_q_lora.down.weight`: the processor sat on the attention block.
    let (block, tail) = rest.split_once(".processor.")?;
    let (proj, role) = tail.split_once("_lora.")?;
    let role = match role {
        "down.weight" => Role::Down,
        "up.weight" => Role::Up,
        _ => return None,
    };
    let layer = match proj {
        "to_q" | "to_k" | "to_v" => proj,
        "to_out" => "to_out.0",
        _ => return None,
    };
    Some((Format::DiffusersProcessor, c, format!("{block}.{layer}"), role))
}

/// `a.b.to_out.0` → `to_out.0`, `a.b.to_q` → `to_q`.
fn leaf_name(module: &str) -> &str {
    let mut parts = module.rsplitn(3, '.');
    let last = parts.next().unwrap_or(module);
    match parts.next() {
        Some(prev) if last.chars().all(|ch| ch.is_ascii_digit()) => &module[module.len() - last.len() - prev.len() - 1..],
        _ => last,
    }
}

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

fn count(problems: usize) -> String {
    if problems == 1 { "1 problem".into() } else { format!("{problems} problems") }
}

fn component_label(c: Component) -> &'static str {
    match c {
        Component::Unet => "UNet",
        Component::TextEncoder => "text encoder",
    }
}

/// Checks that every entry's data fits its shape and that no module appears twice.
fn check(lora: &LoraFile) -> Result<()> {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for e in &lora.entries {
        let name = format!("{} `{}`", component_label(e.component), e.module);
        if !seen.insert((e.component, e.module.as_str())) {
            problems.push(format!("{name}: appears twice"));
        }
        if e.rank == 0 || e.down.len() != e.rank * e.in_features || e.up.len() != e.out_features * e.rank {
            problems.push(format!(
                "{name}: rank {} in {} out {} but down holds {} values and up {}",
                e.rank,
                e.in_features,
                e.out_features,
                e.down.len(),
                e.up.len()
            ));
        }
    }
    if !problems.is_empty() {
        bail!("cannot write the LoRA ({}):\n  {}", count(problems.len()), problems.join("\n  "));
    }
    Ok(())
}

/// The most frequent value (the first seen among ties), for the single rank / alpha a format's
/// metadata holds.
fn most_common<T: Copy + PartialEq>(values: impl Iterator<Item = T>) -> Option<T> {
    let mut counts: Vec<(T, usize)> = Vec::new();
    for v in values {
        match counts.iter_mut().find(|(u, _)| *u == v) {
            Some((_, n)) => *n += 1,
            None => counts.push((v, 1)),
        }
    }
    let best = counts.iter().fold(None::<(T, usize)>, |b, &(v, n)| match b {
        Some((_, bn)) if bn >= n => b,
        _ => Some((v, n)),
    });
    best.map(|(v, _)| v)
}

/// `8` for 8.0 (as kohya's `str(int)` and diffusers' JSON write integral alphas), else the shortest
/// exact decimal.
fn alpha_text(a: f32) -> String {
    if a.fract() == 0.0 && a.abs() < 1e9 { format!("{}", a as i64) } else { format!("{a}") }
}

fn alpha_json(a: f32) -> Value {
    if a.fract() == 0.0 && a.abs() < 1e9 { json!(a as i64) } else { json!(a as f64) }
}

/// The safetensors bytes of `lora` in kohya naming (what AUTOMATIC1111, ComfyUI and kohya's
/// scripts load). `output_name` fills `ss_output_name` unless the metadata already has one.
pub fn kohya_bytes(lora: &LoraFile, output_name: &str, store: StoreAs) -> Result<Vec<u8>> {
    check(lora)?;
    let mut tensors = BTreeMap::new();
    for e in &lora.entries {
        let base = format!("{}_{}", e.component.kohya_prefix(), e.module.replace('.', "_"));
        tensors.insert(format!("{base}.lora_down.weight"), OwnedTensor { shape: e.down_shape(), data: e.down.clone() });
        tensors.insert(format!("{base}.lora_up.weight"), OwnedTensor { shape: e.up_shape(), data: e.up.clone() });
        tensors.insert(format!("{base}.alpha"), OwnedTensor { shape: vec![], data: vec![e.alpha] });
    }
    let mut md = lora.metadata.clone();
    // PEFT's config would describe a file that is no longer PEFT.
    md.remove("lora_adapter_metadata");
    md.insert("ss_network_module".into(), "networks.lora".into());
    if let Some(r) = most_common(lora.entries.iter().map(|e| e.rank)) {
        md.insert("ss_network_dim".into(), r.to_string());
    }
    if let Some(a) = most_common(lora.entries.iter().map(|e| e.alpha)) {
        md.insert("ss_network_alpha".into(), alpha_text(a));
    }
    md.entry("ss_base_model_version".into()).or_insert_with(|| "sd_v1".into());
    md.entry("ss_output_name".into()).or_insert_with(|| output_name.into());
    safetensors::serialize_as(&tensors, &md, store)
}

/// The safetensors bytes of `lora` in PEFT naming, as diffusers' `save_lora_weights` writes it
/// (loadable by `pipe.load_lora_weights`).
pub fn peft_bytes(lora: &LoraFile, store: StoreAs) -> Result<Vec<u8>> {
    check(lora)?;
    let mut tensors = BTreeMap::new();
    // A BTreeMap serialises with sorted keys, as diffusers' `json.dumps(sort_keys=True)`.
    let mut config: BTreeMap<String, Value> = BTreeMap::new();
    for c in [Component::Unet, Component::TextEncoder] {
        let entries: Vec<&LoraEntry> = lora.entries.iter().filter(|e| e.component == c).collect();
        let (Some(r), Some(alpha)) = (most_common(entries.iter().map(|e| e.rank)), most_common(entries.iter().map(|e| e.alpha))) else {
            continue;
        };
        let p = c.diffusers_prefix();
        for e in &entries {
            let base = format!("{p}.{}", e.module);
            tensors.insert(format!("{base}.lora_A.weight"), OwnedTensor { shape: e.down_shape(), data: e.down.clone() });
            tensors.insert(format!("{base}.lora_B.weight"), OwnedTensor { shape: e.up_shape(), data: e.up.clone() });
        }
        // Full module paths, as diffusers itself writes them when it infers a config: PEFT then
        // wraps exactly these modules, and each pattern key (a regex matched as `(.*\.)?key$`) hits
        // its one module.
        let mut rank_pattern = serde_json::Map::new();
        let mut alpha_pattern = serde_json::Map::new();
        for e in &entries {
            if e.rank != r {
                rank_pattern.insert(e.module.clone(), json!(e.rank));
            }
            if e.alpha != alpha {
                alpha_pattern.insert(e.module.clone(), alpha_json(e.alpha));
            }
        }
        let targets: Vec<&str> = entries.iter().map(|e| e.module.as_str()).collect();
        // The fields diffusers' loader needs (`rank_pattern`, `target_modules` are read directly)
        // plus the defaults that pin down plain LoRA; everything is passed to `LoraConfig(**...)`.
        let fields = [
            ("alpha_pattern", Value::Object(alpha_pattern)),
            ("bias", json!("none")),
            ("init_lora_weights", json!(true)),
            ("lora_alpha", alpha_json(alpha)),
            ("lora_dropout", json!(0.0)),
            ("peft_type", json!("LORA")),
            ("r", json!(r)),
            ("rank_pattern", Value::Object(rank_pattern)),
            ("target_modules", json!(targets)),
            ("use_dora", json!(false)),
            ("use_rslora", json!(false)),
        ];
        for (k, v) in fields {
            config.insert(format!("{p}.{k}"), v);
        }
    }
    let mut md = lora.metadata.clone();
    // kohya's network description would describe a file that is no longer kohya.
    md.retain(|k, _| !k.starts_with("ss_network_"));
    md.insert("format".into(), "pt".into());
    md.insert("lora_adapter_metadata".into(), serde_json::to_string_pretty(&config)?);
    safetensors::serialize_as(&tensors, &md, store)
}

/// The bytes of `lora` in `format` (kohya or PEFT; the processor naming is read only), every
/// tensor stored as `store`; `output_name` fills kohya's `ss_output_name` when unset.
pub fn bytes(lora: &LoraFile, format: Format, store: StoreAs, output_name: &str) -> Result<Vec<u8>> {
    match format {
        Format::Kohya => kohya_bytes(lora, output_name, store),
        Format::Peft => peft_bytes(lora, store),
        Format::DiffusersProcessor => bail!("the diffusers attention-processor naming is read only; write kohya or peft"),
    }
}

/// Writes `lora` in `format` atomically, storing every tensor as `store`.
pub fn write_as(path: &Path, lora: &LoraFile, format: Format, store: StoreAs) -> Result<()> {
    let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let bytes = bytes(lora, format, store, &name).with_context(|| format!("writing {}", path.display()))?;
    crate::io::atomic::write(path, &bytes)
}

/// Writes `lora` in `format` atomically, in float32.
pub fn write(path: &Path, lora: &LoraFile, format: Format) -> Result<()> {
    write_as(path, lora, format, StoreAs::F32)
}

/// Reads `input` in whatever naming it has and writes it to `output` in `to`.
pub fn convert(input: &Path, output: &Path, to: Format, modules: &KnownModules) -> Result<LoraFile> {
    let lora = read(input, modules)?;
    write(output, &lora, to)?;
    Ok(lora)
}

/// A human-readable account of a LoRA for `catlora inspect`.
pub fn summary(lora: &LoraFile) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let format = lora.format.map_or("in memory", Format::name);
    let _ = writeln!(s, "format: {format}");
    let count = |c| lora.entries.iter().filter(|e| e.component == c).count();
    let _ =
        writeln!(s, "modules: {} (unet {}, text encoder {})", lora.entries.len(), count(Component::Unet), count(Component::TextEncoder));
    let mut ranks: BTreeMap<usize, usize> = BTreeMap::new();
    let mut alphas: BTreeMap<String, usize> = BTreeMap::new();
    let mut targets: BTreeMap<(Component, &str), usize> = BTreeMap::new();
    let mut params = 0usize;
    for e in &lora.entries {
        *ranks.entry(e.rank).or_default() += 1;
        *alphas.entry(format!("{} (scale {})", alpha_text(e.alpha), e.scale())).or_default() += 1;
        *targets.entry((e.component, e.leaf())).or_default() += 1;
        params += e.down.len() + e.up.len();
    }
    let list = |m: Vec<String>| m.join(", ");
    let _ = writeln!(s, "rank: {}", list(ranks.iter().map(|(r, n)| format!("{r} ×{n}")).collect()));
    let _ = writeln!(s, "alpha: {}", list(alphas.iter().map(|(a, n)| format!("{a} ×{n}")).collect()));
    let _ = writeln!(s, "parameters: {params}");
    let _ = writeln!(s, "targets:");
    for ((c, leaf), n) in &targets {
        let _ = writeln!(s, "  {} {leaf}: {n}", c.diffusers_prefix());
    }
    if !lora.metadata.is_empty() {
        let _ = writeln!(s, "metadata:");
        for (k, v) in &lora.metadata {
            // Long values (PEFT's JSON config, kohya's tag frequencies) would swamp the rest.
            let v = v.replace('\n', " ");
            let shown =
                if v.chars().count() > 120 { format!("{}… ({} chars)", v.chars().take(120).collect::<String>(), v.len()) } else { v };
            let _ = writeln!(s, "  {k} = {shown}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn fixture(p: &str) -> PathBuf {
        crate::fixtures::fixture(p)
    }
    fn kohya_fixture() -> PathBuf {
        fixture("lora-kohya/lora.safetensors")
    }
    fn peft_fixture() -> PathBuf {
        fixture("lora-diffusers/pytorch_lora_weights.safetensors")
    }

    /// The tiny UNet's LoRA'd module paths, taken from the PEFT fixture's keys (no model code yet).
    fn known() -> KnownModules {
        let f = SafeTensorsFile::open(&peft_fixture()).unwrap();
        let unet: BTreeSet<String> =
            f.names().filter_map(|k| k.strip_prefix("unet.")?.strip_suffix(".lora_A.weight").map(str::to_string)).collect();
        let text_encoder = (0..2)
            .flat_map(|l| ["q_proj", "k_proj", "v_proj", "out_proj"].map(|p| format!("text_model.encoder.layers.{l}.self_attn.{p}")))
            .collect();
        KnownModules { unet: unet.into_iter().collect(), text_encoder }
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("catlora-lora-file-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Equal entries, floats compared bit for bit.
    fn assert_same(a: &[LoraEntry], b: &[LoraEntry]) {
        assert_eq!(a.len(), b.len());
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for (x, y) in a.iter().zip(b) {
            assert_eq!(
                (x.component, &x.module, x.rank, x.in_features, x.out_features, x.conv, x.alpha.to_bits()),
                (y.component, &y.module, y.rank, y.in_features, y.out_features, y.conv, y.alpha.to_bits())
            );
            assert!(bits(&x.down) == bits(&y.down) && bits(&x.up) == bits(&y.up), "{}", x.module);
        }
    }

    #[test]
    fn kohya_and_peft_fixtures_read_to_the_same_entries() {
        let k = read(&kohya_fixture(), &known()).unwrap();
        let p = read(&peft_fixture(), &known()).unwrap();
        assert_eq!(k.format, Some(Format::Kohya));
        assert_eq!(p.format, Some(Format::Peft));
        assert_eq!(k.entries.len(), 128);
        assert!(k.entries.iter().all(|e| e.rank == 4 && e.alpha == 8.0 && !e.conv && e.component == Component::Unet));
        assert_same(&k.entries, &p.entries);
        let e = k.entries.iter().find(|e| e.module.ends_with("attn2.to_k")).unwrap();
        assert_eq!((e.in_features, e.leaf()), (32, "to_k"));
        let s = summary(&k);
        assert!(s.contains("format: kohya") && s.contains("rank: 4 ×128") && s.contains("unet to_out.0: 32"), "{s}");
    }

    #[test]
    fn round_trips_are_exact_and_bytes_deterministic() {
        let dir = tmp("roundtrip");
        let mut lora = read(&peft_fixture(), &known()).unwrap();
        lora.metadata.insert("catlora_trigger".into(), "sks cat".into());
        for (format, name) in [(Format::Kohya, "k.safetensors"), (Format::Peft, "p.safetensors")] {
            let path = dir.join(name);
            write(&path, &lora, format).unwrap();
            let first = std::fs::read(&path).unwrap();
            write(&path, &lora, format).unwrap();
            assert_eq!(first, std::fs::read(&path).unwrap(), "{name}: bytes differ between writes");
            let back = read(&path, &known()).unwrap();
            assert_eq!(back.format, Some(format));
            assert_same(&lora.entries, &back.entries);
            assert_eq!(back.metadata["catlora_trigger"], "sks cat");
        }
        let k = SafeTensorsFile::open(&dir.join("k.safetensors")).unwrap();
        let md = k.metadata();
        assert_eq!(
            ["ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_base_model_version", "ss_output_name"]
                .map(|key| md[key].as_str()),
            ["networks.lora", "4", "8", "sd_v1", "k"]
        );
        assert!(!md.contains_key("lora_adapter_metadata"));
        let alpha = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.alpha";
        assert_eq!(k.f32(alpha).unwrap(), (vec![], vec![8.0]));
        // The PEFT header carries the same config fields, in the same JSON form, as the fixture's.
        let ours: Value =
            serde_json::from_str(&SafeTensorsFile::open(&dir.join("p.safetensors")).unwrap().metadata()["lora_adapter_metadata"]).unwrap();
        let theirs: Value =
            serde_json::from_str(&SafeTensorsFile::open(&peft_fixture()).unwrap().metadata()["lora_adapter_metadata"]).unwrap();
        for f in ["r", "lora_alpha", "rank_pattern", "alpha_pattern", "bias", "peft_type", "use_dora", "use_rslora"] {
            assert_eq!(ours[format!("unet.{f}")], theirs[format!("unet.{f}")], "{f}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_and_broken_keys_are_all_named() {
        let dir = tmp("bogus");
        let src = SafeTensorsFile::open(&kohya_fixture()).unwrap();
        let mut tensors = BTreeMap::new();
        for name in src.names() {
            let (shape, data) = src.f32(name).unwrap();
            tensors.insert(name.clone(), OwnedTensor { shape, data });
        }
        let t = |shape: Vec<usize>| OwnedTensor { data: vec![0.0; shape.iter().product()], shape };
        tensors.insert("lora_unet_down_blocks_0_bogus.lora_down.weight".into(), t(vec![4, 32]));
        tensors.insert("something_else.weight".into(), t(vec![1]));
        // Down without up.
        tensors.remove("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight");
        // Rank mismatch.
        tensors.insert("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_k.lora_up.weight".into(), t(vec![64, 3]));
        let path = dir.join("bad.safetensors");
        safetensors::write(&path, &tensors, src.metadata()).unwrap();
        let err = format!("{:#}", read(&path, &known()).unwrap_err());
        for needle in [
            "bad.safetensors",
            "4 problems",
            "lora_unet_down_blocks_0_bogus.lora_down.weight",
            "something_else.weight",
            "attn1_to_q.lora_down.weight`: down weight without an up weight",
            "attn1_to_k.lora_up.weight` [64, 3]: the ranks of down and up differ",
        ] {
            assert!(err.contains(needle), "missing `{needle}` in:\n{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn old_processor_naming_reads() {
        let dir = tmp("processor");
        let block = "down_blocks.0.attentions.0.transformer_blocks.0.attn1";
        let mut tensors = BTreeMap::new();
        let seq = |n: usize, k: f32| (0..n).map(|i| i as f32 * k).collect::<Vec<_>>();
        for (i, proj) in ["to_q", "to_out"].into_iter().enumerate() {
            // One with the `unet.` prefix, one without: both forms were written.
            let prefix = if i == 0 { "unet." } else { "" };
            let base = format!("{prefix}{block}.processor.{proj}_lora");
            tensors.insert(format!("{base}.down.weight"), OwnedTensor { shape: vec![2, 32], data: seq(64, 0.5) });
            tensors.insert(format!("{base}.up.weight"), OwnedTensor { shape: vec![32, 2], data: seq(64, -0.25) });
        }
        let path = dir.join("old.safetensors");
        safetensors::write(&path, &tensors, &BTreeMap::new()).unwrap();
        let lora = read(&path, &known()).unwrap();
        assert_eq!(lora.format, Some(Format::DiffusersProcessor));
        let modules: Vec<&str> = lora.entries.iter().map(|e| e.module.as_str()).collect();
        assert_eq!(modules, [format!("{block}.to_out.0"), format!("{block}.to_q")]);
        let e = &lora.entries[1];
        assert_eq!((e.rank, e.in_features, e.out_features, e.alpha), (2, 32, 32, 2.0));
        assert_eq!((e.down[3], e.up[3]), (1.5, -0.75));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn text_encoder_entries_round_trip_in_both_namings() {
        let dir = tmp("te");
        let m = "text_model.encoder.layers.1.self_attn.out_proj";
        let entry = |component, module: &str, rank: usize, alpha| LoraEntry {
            component,
            module: module.into(),
            rank,
            in_features: 32,
            out_features: 32,
            conv: false,
            down: (0..rank * 32).map(|i| i as f32 / 7.0).collect(),
            up: (0..rank * 32).map(|i| -(i as f32) / 3.0).collect(),
            alpha,
        };
        let unet_q = known().unet[0].clone();
        let lora = LoraFile {
            // Mixed ranks and alphas exercise rank_pattern / alpha_pattern.
            entries: vec![
                entry(Component::Unet, &unet_q, 4, 8.0),
                entry(Component::TextEncoder, m, 2, 1.5),
                entry(Component::TextEncoder, "text_model.encoder.layers.0.self_attn.q_proj", 4, 4.0),
                entry(Component::TextEncoder, "text_model.encoder.layers.0.self_attn.k_proj", 4, 4.0),
            ],
            metadata: BTreeMap::new(),
            format: None,
        };
        let mut sorted = lora.entries.clone();
        sorted.sort_by(|a, b| (a.component, &a.module).cmp(&(b.component, &b.module)));
        for format in [Format::Kohya, Format::Peft] {
            let path = dir.join(format!("{}.safetensors", format.name()));
            write(&path, &lora, format).unwrap();
            assert_same(&sorted, &read(&path, &known()).unwrap().entries);
        }
        let k = SafeTensorsFile::open(&dir.join("kohya.safetensors")).unwrap();
        assert!(k.info(&format!("lora_te_{}.alpha", m.replace('.', "_"))).is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
