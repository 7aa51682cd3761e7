//! Chat lines become the template's tokens with the loss on assistant turns only; steps
//! whose loss is not finite are refused and never reach a checkpoint.

use std::path::{Path, PathBuf};

use artist_model::Qwen2;
use artist_tokenizer::{ChatTemplate, Message, Tokenizer};
use artist_train::checkpoint;
use artist_train::data::{ChatFormat, Overlong, parse_jsonl};
use artist_train::sft::{RunOptions, SftConfig, train};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen2").join(name)
}

#[test]
fn chat_lines_train_on_assistant_turns_only() {
    let dir = fixture("tiny-gqa");
    let (tokenizer, template) = (Tokenizer::from_dir(&dir).unwrap(), ChatTemplate::from_dir(&dir).unwrap());
    let chat = ChatFormat { tokenizer: &tokenizer, template: &template };
    let line = r#"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Name a color."},{"role":"assistant","content":"Blue."},{"role":"user","content":"Another?"},{"role":"assistant","content":"Red, or green."}]}
{"messages":[{"role":"user","content":"hello"}]}"#;
    let (ex, stats) = parse_jsonl(line, Path::new("chat.jsonl"), Some(&chat), 311, 4096, Overlong::Truncate).unwrap();
    assert_eq!((ex.len(), stats.skipped_no_assistant), (1, 1));
    let e = &ex[0];
    // The tokens are the template's rendering of the whole conversation...
    let messages: Vec<Message> = vec![
        Message::system("Be brief."),
        Message::user("Name a color."),
        Message::assistant("Blue."),
        Message::user("Another?"),
        Message::assistant("Red, or green."),
    ];
    let text = template.render(&messages, None, false).unwrap();
    assert_eq!(tokenizer.decode(&e.ids, false).unwrap(), text);
    // ...and the targets are exactly the assistant turns with their end-of-turn tokens.
    let mut spans = Vec::new();
    let mut cur: Vec<u32> = Vec::new();
    for (i, &id) in e.ids.iter().enumerate() {
        if e.mask[i] == 1 {
            cur.push(id);
        } else if !cur.is_empty() {
            spans.push(tokenizer.decode(&std::mem::take(&mut cur), false).unwrap());
        }
    }
    if !cur.is_empty() {
        spans.push(tokenizer.decode(&cur, false).unwrap());
    }
    assert_eq!(spans, vec!["Blue.<|im_end|>\n".to_string(), "Red, or green.<|im_end|>\n".to_string()]);
}

/// A model with a NaN weight: every step's loss is NaN, so every update is refused, the
/// run stops after `max_bad_steps` in a row, and no checkpoint is written.
#[test]
fn non_finite_steps_are_refused_and_never_saved() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("tiny-gqa");
    let model = Qwen2::load(&src).unwrap();
    model.params()[3].value().update_f32(|v| v[5] = f32::NAN).unwrap();
    let bad_model = tmp.path().join("nan-model");
    std::fs::create_dir_all(&bad_model).unwrap();
    checkpoint::write_hf_model(&bad_model, &model, Some(&src)).unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/training/sft/gqa-cosine/data.jsonl");
    let config = SftConfig { model: bad_model, data, steps: 5, max_bad_steps: 3, ..SftConfig::default() };

    let run = tmp.path().join("run");
    let e = train(&run, config.clone(), &RunOptions::default()).unwrap_err().to_string();
    assert!(e.contains("3 steps in a row") && e.contains("not finite"), "{e}");
    assert!(checkpoint::latest(&run).unwrap().is_none());
    let lines = artist_train::metrics::read(&run.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| l["refused"] == true && l["loss"] == "NaN"));

    // Fewer bad steps than the limit: the run ends, but the NaN weights are not saved.
    let run = tmp.path().join("run2");
    let e = train(&run, SftConfig { steps: 2, ..config }, &RunOptions::default()).unwrap_err().to_string();
    assert!(e.contains("NaN") && e.contains("not written"), "{e}");
    assert!(checkpoint::latest(&run).unwrap().is_none());
}
