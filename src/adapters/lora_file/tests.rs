//! Reading and writing the fixtures' LoRA files in every naming.
use super::*;
use crate::io::safetensors::{self, OwnedTensor, SafeTensorsFile};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
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
        ["ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_base_model_version", "ss_output_name"].map(|key| md[key].as_str()),
        ["networks.lora", "4", "8", "sd_v1", "k"]
    );
    assert!(!md.contains_key("lora_adapter_metadata"));
    let alpha = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.alpha";
    assert_eq!(k.f32(alpha).unwrap(), (vec![], vec![8.0]));
    // The PEFT header carries the same config fields, in the same JSON form, as the fixture's.
    let ours: Value =
        serde_json::from_str(&SafeTensorsFile::open(&dir.join("p.safetensors")).unwrap().metadata()["lora_adapter_metadata"]).unwrap();
    let theirs: Value = serde_json::from_str(&SafeTensorsFile::open(&peft_fixture()).unwrap().metadata()["lora_adapter_metadata"]).unwrap();
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
