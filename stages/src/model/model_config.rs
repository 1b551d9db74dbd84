//! A model folder's `config.json`, read and checked: values no model can be built from, or that
//! flora would compute differently from HuggingFace, are refused by name before any weight is
//! read, rather than panicking in a tensor op or predicting from a model other than the one saved.

use std::path::Path;

use super::roberta::Config;

/// Reads `dir/config.json`: the checked config, and the whole JSON (for fields of flora's own,
/// such as `flora_head`). Errors name the file.
pub fn read(dir: &Path) -> Result<(Config, serde_json::Value), String> {
    let path = dir.join("config.json");
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let text = std::fs::read(&path).map_err(|e| fail(&e))?;
    let value: serde_json::Value = serde_json::from_slice(&text).map_err(|e| fail(&e))?;
    let cfg: Config = serde_json::from_value(value.clone()).map_err(|e| fail(&e))?;
    check(&cfg).map_err(|e| fail(&e))?;
    Ok((cfg, value))
}

/// Refuses a config no RoBERTa can be built from, or one whose layers flora does not compute as
/// HuggingFace does (an activation other than the erf GELU).
pub fn check(cfg: &Config) -> Result<(), String> {
    for (name, value) in [
        ("vocab_size", cfg.vocab_size),
        ("hidden_size", cfg.hidden_size),
        ("num_hidden_layers", cfg.num_hidden_layers),
        ("num_attention_heads", cfg.num_attention_heads),
        ("intermediate_size", cfg.intermediate_size),
        ("type_vocab_size", cfg.type_vocab_size),
    ] {
        if value == 0 {
            return Err(format!("{name} is 0; a model needs at least 1"));
        }
    }
    if !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
        return Err(format!(
            "hidden_size {} is not a multiple of num_attention_heads {}",
            cfg.hidden_size, cfg.num_attention_heads
        ));
    }
    if cfg.hidden_act != "gelu" {
        return Err(format!(
            "hidden_act `{}`: flora computes `gelu` (the erf form) alone",
            cfg.hidden_act
        ));
    }
    if !(cfg.layer_norm_eps.is_finite() && cfg.layer_norm_eps > 0.0) {
        return Err(format!(
            "layer_norm_eps {} must be a number above 0",
            cfg.layer_norm_eps
        ));
    }
    for (name, p) in [
        ("hidden_dropout_prob", cfg.hidden_dropout_prob),
        (
            "attention_probs_dropout_prob",
            cfg.attention_probs_dropout_prob,
        ),
    ] {
        if !(0.0..1.0).contains(&p) {
            return Err(format!("{name} {p} must be at least 0 and below 1"));
        }
    }
    for (name, id) in [
        ("pad_token_id", cfg.pad_token_id),
        ("bos_token_id", cfg.bos_token_id),
        ("eos_token_id", cfg.eos_token_id),
    ] {
        if id as usize >= cfg.vocab_size {
            return Err(format!(
                "{name} {id} is outside the vocabulary of {}",
                cfg.vocab_size
            ));
        }
    }
    // Positions count from pad_token_id + 1, and a sequence holds at least <s>, one token, </s>.
    let least = cfg.pad_token_id as usize + 1 + 3;
    if cfg.max_position_embeddings < least {
        return Err(format!(
            "max_position_embeddings {} leaves no room for a sequence: with pad_token_id {} it \
             must be at least {least}",
            cfg.max_position_embeddings, cfg.pad_token_id
        ));
    }
    Ok(())
}

/// Refuses a tokenizer with ids past the model's embedding table: it is not the tokenizer the
/// model was trained with.
pub fn check_tokenizer(cfg: &Config, tokenizer: &tokenizers::Tokenizer) -> Result<(), String> {
    let tokens = tokenizer.get_vocab_size(true);
    if tokens > cfg.vocab_size {
        return Err(format!(
            "the tokenizer has {tokens} tokens, more than the model's vocab_size {}: it is not \
             the tokenizer the model was trained with",
            cfg.vocab_size
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::roberta::Positions;

    fn small() -> Config {
        Config::new(505, 2, 64, 4, 128, 96, 0.1, Positions::Tss)
    }

    #[test]
    fn a_config_flora_writes_passes() {
        check(&small()).unwrap();
    }

    #[test]
    fn configs_no_model_can_be_built_from_are_named() {
        type Edit = fn(&mut Config);
        let cases: [(Edit, &str); 12] = [
            (|c| c.hidden_size = 0, "hidden_size is 0"),
            (|c| c.num_attention_heads = 0, "num_attention_heads is 0"),
            (|c| c.num_hidden_layers = 0, "num_hidden_layers is 0"),
            (|c| c.intermediate_size = 0, "intermediate_size is 0"),
            (|c| c.vocab_size = 0, "vocab_size is 0"),
            (
                |c| c.num_attention_heads = 5,
                "hidden_size 64 is not a multiple of num_attention_heads 5",
            ),
            (
                |c| c.hidden_act = "gelu_new".into(),
                "hidden_act `gelu_new`",
            ),
            (|c| c.layer_norm_eps = 0.0, "layer_norm_eps 0"),
            (|c| c.hidden_dropout_prob = 1.0, "hidden_dropout_prob 1"),
            (
                |c| c.attention_probs_dropout_prob = -0.1,
                "attention_probs_dropout_prob -0.1",
            ),
            (|c| c.eos_token_id = 505, "eos_token_id 505 is outside"),
            (
                |c| c.max_position_embeddings = 5,
                "max_position_embeddings 5 leaves no room",
            ),
        ];
        for (edit, want) in cases {
            let mut cfg = small();
            edit(&mut cfg);
            let err = check(&cfg).unwrap_err();
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
    }

    #[test]
    fn reading_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = small();
        cfg.num_attention_heads = 5;
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_string(&cfg).unwrap(),
        )
        .unwrap();
        let err = read(dir.path()).unwrap_err();
        assert!(err.starts_with(&format!("{}", dir.path().join("config.json").display())));
        assert!(err.contains("num_attention_heads 5"), "{err}");
        std::fs::write(dir.path().join("config.json"), "{").unwrap();
        assert!(read(dir.path()).unwrap_err().contains("config.json: EOF"));
    }
}
