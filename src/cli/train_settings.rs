//! The settings of a `train` run: `--config` (or the defaults), overridden by the options
//! actually given, then validated.
use super::train::TrainArgs;
use anyhow::{Context, Result, bail};
use catlora::training::config::expand_target_presets;
use catlora::training::config::{Concept, TrainConfig};
use catlora::training::data::expand_kohya_layouts;
use std::path::PathBuf;

/// `once` for every concept, or one per concept in order.
fn spread<T: Clone>(values: &[T], concepts: usize, option: &str) -> Result<Vec<T>> {
    match values.len() {
        1 => Ok(vec![values[0].clone(); concepts]),
        n if n == concepts => Ok(values.to_vec()),
        n => bail!("{option} is given {n} times for {concepts} concept(s): give it once, or once per concept"),
    }
}

/// `to_q, to_k, te:q_proj` → (UNet leaves, text-encoder leaves).
fn parse_targets(list: &str) -> Result<(Vec<String>, Vec<String>)> {
    let (mut unet, mut te) = (Vec::new(), Vec::new());
    for item in list.split(',').map(str::trim) {
        match item.strip_prefix("te:") {
            _ if item.is_empty() => bail!("--targets `{list}` has an empty entry"),
            Some("") => bail!("--targets `{list}`: `te:` needs a layer name"),
            Some(leaf) => te.push(leaf.to_string()),
            None => unet.push(item.to_string()),
        }
    }
    Ok((expand_target_presets(unet), te))
}

/// The run's settings: `--config` (or the defaults), overridden by the options actually given,
/// then validated.
pub fn to_config(a: &TrainArgs) -> Result<TrainConfig> {
    let mut c = match &a.config {
        Some(path) => TrainConfig::from_toml(path)?,
        None => TrainConfig::default(),
    };
    if !a.data.is_empty() || !a.trigger.is_empty() {
        // No --trigger at all: each --data must be kohya's layout, whose folder names give them.
        let triggers = if a.trigger.is_empty() { vec![String::new(); a.data.len()] } else { a.trigger.clone() };
        if a.data.len() != triggers.len() {
            bail!("{} --data but {} --trigger: give one --trigger per --data, in the same order", a.data.len(), a.trigger.len());
        }
        c.concepts = a
            .data
            .iter()
            .zip(triggers)
            .map(|(d, t)| Concept { data: d.clone(), trigger: t, class: None, class_data: None, repeats: 1 })
            .collect();
    }
    if !a.class.is_empty() {
        let classes = spread(&a.class, c.concepts.len(), "--class")?;
        for (concept, class) in c.concepts.iter_mut().zip(classes) {
            concept.class = Some(class);
        }
    }
    if !a.class_data.is_empty() {
        let dirs = spread(&a.class_data, c.concepts.len(), "--class-data")?;
        for (concept, dir) in c.concepts.iter_mut().zip(dirs) {
            concept.class_data = Some(dir);
        }
    }
    if let Some(list) = &a.targets {
        (c.targets, c.text_encoder_targets) = parse_targets(list)?;
    }
    // A prompt file's lines, then the prompts given one by one; none given keeps the field.
    let prompts = |file: &Option<PathBuf>, given: &[String]| -> Result<Option<Vec<String>>> {
        let mut v = match file {
            Some(f) => catlora::io::read_prompt_file(f)?,
            None => Vec::new(),
        };
        v.extend(given.iter().cloned());
        Ok((!v.is_empty()).then_some(v))
    };
    if let Some(v) = prompts(&a.sample_prompts, &a.sample_prompt)? {
        c.sample_prompts = v;
    }
    if let Some(v) = prompts(&a.eval_prompts, &a.eval_prompt)? {
        c.eval_prompts = v;
    }
    if a.clip.is_some() {
        c.clip = a.clip.clone();
    }
    if a.keep_best {
        c.keep_best = true;
    }
    set(&mut c.eval_every, &a.eval_every);
    set(&mut c.eval_seeds, &a.eval_seeds);
    // Plain overrides: the field takes the option's value only when the option was given.
    fn set<T: Clone>(field: &mut T, value: &Option<T>) {
        if let Some(v) = value {
            *field = v.clone();
        }
    }
    set(&mut c.model, &a.model);
    set(&mut c.out, &a.out);
    set(&mut c.method, &a.method);
    set(&mut c.cat_weight, &a.cat_weight);
    if let Some(list) = &a.preserve {
        c.preserve = list.0.clone();
    }
    set(&mut c.preserve_every, &a.preserve_every);
    set(&mut c.batch_passes, &a.batch_passes);
    set(&mut c.precision, &a.precision);
    set(&mut c.dco_beta, &a.dco_beta);
    set(&mut c.prior_weight, &a.prior_weight);
    set(&mut c.class_images, &a.class_images);
    set(&mut c.rank, &a.rank);
    set(&mut c.alpha, &a.alpha);
    set(&mut c.lr, &a.lr);
    if a.unet_lr.is_some() {
        c.unet_lr = a.unet_lr;
    }
    if a.text_encoder_lr.is_some() {
        c.text_encoder_lr = a.text_encoder_lr;
    }
    set(&mut c.lr_schedule, &a.lr_schedule);
    set(&mut c.warmup, &a.warmup);
    set(&mut c.beta1, &a.beta1);
    set(&mut c.beta2, &a.beta2);
    set(&mut c.weight_decay, &a.weight_decay);
    set(&mut c.eps, &a.eps);
    set(&mut c.max_grad_norm, &a.max_grad_norm);
    set(&mut c.steps, &a.steps);
    set(&mut c.batch, &a.batch);
    set(&mut c.grad_accum, &a.grad_accum);
    set(&mut c.resolution, &a.resolution);
    set(&mut c.random_crop, &a.random_crop);
    set(&mut c.enable_bucket, &a.enable_bucket);
    set(&mut c.min_bucket_reso, &a.min_bucket_reso);
    set(&mut c.max_bucket_reso, &a.max_bucket_reso);
    set(&mut c.bucket_reso_steps, &a.bucket_reso_steps);
    set(&mut c.flip, &a.flip);
    set(&mut c.caption_dropout, &a.caption_dropout);
    set(&mut c.shuffle_caption, &a.shuffle_caption);
    set(&mut c.keep_tokens, &a.keep_tokens);
    set(&mut c.min_snr_gamma, &a.min_snr_gamma);
    set(&mut c.noise_offset, &a.noise_offset);
    set(&mut c.seed, &a.seed);
    set(&mut c.save_every, &a.save_every);
    set(&mut c.sample_every, &a.sample_every);
    set(&mut c.sample_steps, &a.sample_steps);
    set(&mut c.format, &a.format);
    set(&mut c.save_precision, &a.save_precision);
    set(&mut c.caption_extension, &a.caption_extension);
    set(&mut c.device, &a.device);

    if c.model.as_os_str().is_empty() {
        bail!("no base model: give --model DIR (or `model` in the config file)");
    }
    if c.out.as_os_str().is_empty() {
        bail!("no output file: give --out FILE (or `out` in the config file)");
    }
    catlora::device::parse(&c.device)?;
    c.concepts = expand_kohya_layouts(std::mem::take(&mut c.concepts))?;
    for concept in &c.concepts {
        if concept.trigger.is_empty() {
            bail!(
                "--data {}: give its --trigger, or use kohya's layout (`<repeats>_<trigger> <class>` subfolders)",
                concept.data.display()
            );
        }
    }
    let source = a.config.as_ref().map_or(String::new(), |p| format!(" (with {})", p.display()));
    c.validate().with_context(|| format!("invalid training settings{source}"))?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use catlora::training::config::{FileFormat, Method, Schedule};
    use clap::Parser;

    /// One name per setting: every option of `train` is a field of the config file, spelt the
    /// same with `_` for `-`, and every field is an option (apart from the concept table, whose
    /// fields are the per-concept options).
    #[test]
    fn every_option_is_a_config_field_of_the_same_name() {
        let cmd = <TrainArgs as clap::Args>::augment_args(clap::Command::new("train"));
        let options: std::collections::BTreeSet<String> =
            cmd.get_arguments().filter_map(|a| a.get_long()).map(|l| l.replace('-', "_")).collect();
        let fields: std::collections::BTreeSet<String> =
            serde_json::to_value(TrainConfig::default()).unwrap().as_object().unwrap().keys().cloned().collect();
        let run_only = ["config", "resume", "print_config", "data", "trigger", "class", "class_data", "sample_prompt", "eval_prompt"];
        let field_only = ["concepts", "text_encoder_targets"];
        for o in &options {
            assert!(fields.contains(o) || run_only.contains(&o.as_str()), "--{} is not a config field", o.replace('_', "-"));
        }
        for f in &fields {
            assert!(options.contains(f) || field_only.contains(&f.as_str()), "config field `{f}` has no option");
        }
        // The concept options are the concept table's fields.
        let concept =
            serde_json::to_value(Concept { data: "d".into(), trigger: "t".into(), class: None, class_data: None, repeats: 1 }).unwrap();
        for f in ["data", "trigger", "class", "class_data"] {
            assert!(concept.get(f).is_some(), "concept field `{f}`");
        }
    }

    #[test]
    fn targets_in_a_config_file_may_be_one_string() {
        let c = TrainConfig::from_toml_str("targets = \"to_q, to_v\"\nlr_schedule = \"cosine\"\nwarmup = 5\n").unwrap();
        assert_eq!((c.targets, c.lr_schedule, c.warmup), (vec!["to_q".to_string(), "to_v".to_string()], Schedule::Cosine, 5));
        let c = TrainConfig::from_toml_str("targets = \"attn+ff\"\n").unwrap();
        assert_eq!(c.targets, ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]);
        let (unet, te) = parse_targets("all-linear, te:q_proj").unwrap();
        assert_eq!((unet.len(), unet[0].as_str(), te), (8, "proj_in", vec!["q_proj".to_string()]));
        // The older names still read.
        let c = TrainConfig::from_toml_str("schedule = \"linear\"\nwarmup_steps = 3\n").unwrap();
        assert_eq!((c.lr_schedule, c.warmup), (Schedule::Linear, 3));
    }

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: TrainArgs,
    }

    fn parse(args: &[&str]) -> Result<TrainConfig> {
        let cmd = Cmd::try_parse_from(std::iter::once("train").chain(args.iter().copied()))?;
        to_config(&cmd.args)
    }

    const BASE: [&str; 8] = ["--model", "m", "--data", "d", "--trigger", "sks", "--out", "o.safetensors"];

    #[test]
    fn options_override_only_what_is_given() {
        let c = parse(&BASE).unwrap();
        let want = TrainConfig {
            model: "m".into(),
            out: "o.safetensors".into(),
            concepts: vec![Concept { data: "d".into(), trigger: "sks".into(), class: None, class_data: None, repeats: 1 }],
            ..TrainConfig::default()
        };
        assert_eq!(c, want);

        let mut args = BASE.to_vec();
        args.extend([
            "--method",
            "dreambooth",
            "--rank",
            "8",
            "--alpha",
            "16",
            "--lr",
            "5e-5",
            "--lr-schedule",
            "cosine",
            "--warmup",
            "10",
            "--steps",
            "20",
            "--batch",
            "2",
            "--grad-accum",
            "3",
            "--flip",
            "--random-crop=false",
            "--min-snr-gamma",
            "5",
            "--seed",
            "7",
            "--format",
            "diffusers",
            "--targets",
            "to_q, to_v,te:q_proj",
            "--sample-prompt",
            "a",
            "--sample-prompt",
            "b",
            "--class",
            "cat",
            "--cat-weight",
            "0.5",
            "--batch-passes=false",
        ]);
        let c = parse(&args).unwrap();
        assert!(!c.batch_passes && TrainConfig::default().batch_passes);
        assert_eq!((c.method, c.rank, c.alpha, c.lr, c.lr_schedule), (Method::Dreambooth, 8, 16.0, 5e-5, Schedule::Cosine));
        assert_eq!((c.warmup, c.steps, c.batch, c.grad_accum, c.flip, c.random_crop), (10, 20, 2, 3, true, false));
        assert_eq!((c.min_snr_gamma, c.seed, c.format, c.cat_weight), (5.0, 7, FileFormat::Diffusers, 0.5));
        assert_eq!((c.targets, c.text_encoder_targets), (vec!["to_q".into(), "to_v".into()], vec!["q_proj".into()]));
        assert_eq!(c.sample_prompts, ["a", "b"]);
        assert_eq!(c.concepts[0].class.as_deref(), Some("cat"));
        // Untouched fields keep their defaults.
        let d = TrainConfig::default();
        assert_eq!((c.prior_weight, c.resolution, c.max_grad_norm, c.device), (d.prior_weight, d.resolution, d.max_grad_norm, d.device));
    }

    #[test]
    fn config_file_is_the_base() {
        let dir = std::env::temp_dir().join(format!("catlora-cli-train-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("run.toml");
        let toml = "model = \"base\"\nout = \"x.safetensors\"\nrank = 8\nlr = 2e-4\nflip = true\n\
                    [[concepts]]\ndata = \"a\"\ntrigger = \"ohwx\"\n[[concepts]]\ndata = \"b\"\ntrigger = \"zkz\"\n";
        std::fs::write(&path, toml).unwrap();
        let p = path.to_str().unwrap();
        let c = parse(&["--config", p, "--rank", "2", "--class", "dog"]).unwrap();
        assert_eq!((c.rank, c.lr, c.flip, c.model.to_str()), (2, 2e-4, true, Some("base")));
        assert_eq!(
            c.concepts.iter().map(|k| (k.trigger.as_str(), k.class.as_deref())).collect::<Vec<_>>(),
            [("ohwx", Some("dog")), ("zkz", Some("dog"))]
        );
        let c = parse(&["--config", p, "--flip=false", "--data", "n", "--trigger", "new"]).unwrap();
        assert!(!c.flip);
        assert_eq!(c.concepts.len(), 1);
        let e = format!("{:#}", parse(&["--config", p, "--rank", "0"]).unwrap_err());
        assert!(e.contains("run.toml") && e.contains("--rank 0 is out of range"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn concepts_pair_up_and_mismatches_are_named() {
        let c = parse(&[
            "--model",
            "m",
            "--out",
            "o",
            "--data",
            "a",
            "--trigger",
            "t1",
            "--data",
            "b",
            "--trigger",
            "t2",
            "--class",
            "cat",
            "--class",
            "dog",
            "--class-data",
            "cls",
        ])
        .unwrap();
        let got: Vec<_> = c.concepts.iter().map(|k| (k.trigger.as_str(), k.class.as_deref(), k.class_data.clone())).collect();
        assert_eq!(got, [("t1", Some("cat"), Some("cls".into())), ("t2", Some("dog"), Some("cls".into()))]);
        let err = |args: &[&str]| format!("{:#}", parse(args).unwrap_err());
        assert!(err(&["--model", "m", "--out", "o", "--data", "a", "--data", "b", "--trigger", "t"]).contains("2 --data but 1 --trigger"));
        let mut three = BASE.to_vec();
        three.extend(["--class", "a", "--class", "b"]);
        assert!(err(&three).contains("--class is given 2 times for 1 concept"));
        assert!(err(&["--data", "d", "--trigger", "t", "--out", "o"]).contains("--model"));
        assert!(err(&["--model", "m", "--out", "o"]).contains("no training data"));
        let mut bad = BASE.to_vec();
        bad.extend(["--targets", "to_q,,to_k"]);
        assert!(err(&bad).contains("empty entry"));
        let mut bad = BASE.to_vec();
        bad.extend(["--device", "tpu"]);
        assert!(err(&bad).contains("tpu"));
    }
}
