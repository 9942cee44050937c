//! Sample prompts during training in kohya's syntax: `sks teapot on a table --n blurry --s 30
//! --l 7 --d 42 --w 512 --h 512 --ss euler_a` (negative prompt, steps, CFG scale, seed, width,
//! height, sampler), one per line of a prompt file (`#` starts a comment line). What a line does
//! not set comes from the run: its sample steps, resolution and seed, CFG 7.5, DPM++ 2M Karras.
use crate::pipeline::txt2img::GenerateParams;
use crate::schedulers::SamplerKind;
use anyhow::{Context, Result, bail};

/// One line's generation settings over `defaults`.
pub fn parse(line: &str, defaults: &GenerateParams) -> Result<GenerateParams> {
    let mut parts = line.split(" --");
    let mut p = GenerateParams { prompt: parts.next().unwrap_or_default().trim().to_string(), ..defaults.clone() };
    for part in parts {
        let (key, value) = part.trim().split_once(char::is_whitespace).map(|(k, v)| (k, v.trim())).unwrap_or((part.trim(), ""));
        let bad = |what: &str| format!("sample prompt `{line}`: --{key} `{value}` must be {what}");
        match key {
            "n" => p.negative_prompt = value.to_string(),
            "s" => p.steps = value.parse().ok().filter(|&s| s > 0).with_context(|| bad("a positive number of steps"))?,
            "l" => p.cfg = value.parse().ok().filter(|c: &f64| c.is_finite()).with_context(|| bad("a number"))?,
            "d" => p.seed = value.parse().with_context(|| bad("a seed (a non-negative integer)"))?,
            "w" => p.width = value.parse().with_context(|| bad("a width in pixels"))?,
            "h" => p.height = value.parse().with_context(|| bad("a height in pixels"))?,
            "ss" => p.sampler = value.parse::<SamplerKind>().with_context(|| format!("sample prompt `{line}`"))?,
            _ => bail!("sample prompt `{line}`: unknown option --{key} (kohya's are --n, --s, --l, --d, --w, --h, --ss)"),
        }
    }
    if p.prompt.is_empty() {
        bail!("sample prompt `{line}` has no prompt before its options");
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kohya_options_override_the_defaults() {
        let d = GenerateParams { steps: 20, width: 512, height: 512, seed: 3, ..Default::default() };
        let p = parse("sks teapot, on a table --n blurry, low quality --s 30 --l 6.5 --d 42 --w 640 --h 448 --ss euler_a", &d).unwrap();
        assert_eq!((p.prompt.as_str(), p.negative_prompt.as_str()), ("sks teapot, on a table", "blurry, low quality"));
        assert_eq!((p.steps, p.cfg, p.seed, p.width, p.height, p.sampler), (30, 6.5, 42, 640, 448, SamplerKind::EulerAncestral));
        let plain = parse("a teapot", &d).unwrap();
        assert_eq!((plain.steps, plain.seed, plain.width, plain.sampler), (20, 3, 512, d.sampler));
        for (line, needle) in
            [("a --s many", "--s `many`"), ("a --x 1", "unknown option --x"), (" --s 3", "no prompt"), ("a --ss heun", "heun")]
        {
            let e = format!("{:#}", parse(line, &d).unwrap_err());
            assert!(e.contains(needle), "{line}: {e}");
        }
    }
}
