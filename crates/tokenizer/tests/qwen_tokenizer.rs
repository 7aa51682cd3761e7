//! The real Qwen2.5 tokenizer (from `shared/`): the 60 reference encodings of
//! `encode_cases.jsonl` (ids computed with tiktoken on Qwen's ranks), decoding back, streaming
//! decode of Chinese and emoji text whose characters span several byte-level tokens, special
//! tokens, and the vocabulary's edges.

mod common;

use artist_tokenizer::Error;
use common::{qwen, qwen_dir, stream};
use unicode_normalization::UnicodeNormalization;

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

fn cases() -> Option<Vec<Case>> {
    let path = qwen_dir()?.join("encode_cases.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Some(text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect())
}

#[test]
fn encode_cases_match_reference_ids() {
    let (Some(tok), Some(cases)) = (qwen(), cases()) else { return };
    assert_eq!(cases.len(), 60);
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let ids = tok.encode(&case.text).unwrap();
        if ids != case.ids {
            failures.push(format!("case {i} {:?}:\n  got  {ids:?}\n  want {:?}", case.text, case.ids));
        }
    }
    assert!(failures.is_empty(), "{} of 60 cases differ:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn encode_cases_decode_and_stream_back_to_text() {
    let (Some(tok), Some(cases)) = (qwen(), cases()) else { return };
    for (i, case) in cases.iter().enumerate() {
        // The tokenizer's normaliser is NFC: text comes back composed (`e` + U+0301 as `é`).
        let text: String = case.text.nfc().collect();
        let decoded = tok.decode(&case.ids, false).unwrap();
        assert_eq!(decoded, text, "case {i}: decode");
        let (streamed, chunks) = stream(tok, &case.ids, false);
        assert_eq!(streamed, text, "case {i}: stream decode");
        assert!(chunks.iter().all(|c| !c.contains('\u{FFFD}')), "case {i}: a chunk has U+FFFD: {chunks:?}");
    }
}

#[test]
fn stream_holds_back_partial_characters() {
    let Some(tok) = qwen() else { return };
    let text = "你好世界，鑫淼🤖🚀👨‍👩‍👧 café 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ok";
    let ids = tok.encode(text).unwrap();
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
    let (streamed, chunks) = stream(tok, &ids, false);
    assert_eq!(streamed, text);
    // Some of these characters are split across tokens: those steps emit nothing.
    let single: Vec<String> = ids.iter().map(|&id| tok.decode(&[id], false).unwrap()).collect();
    assert!(single.iter().any(|s| s.contains('\u{FFFD}')), "expected a token holding part of a character");
    assert!(chunks.iter().any(String::is_empty));
    for chunk in &chunks {
        assert!(!chunk.contains('\u{FFFD}'), "chunk with U+FFFD: {chunks:?}");
    }
    // Every chunk boundary is a character boundary of the full text.
    let mut at = 0;
    for chunk in &chunks {
        assert!(text.is_char_boundary(at) && text[at..].starts_with(chunk.as_str()));
        at += chunk.len();
    }
}

#[test]
fn stream_finish_flushes_incomplete_tail() {
    let Some(tok) = qwen() else { return };
    let ids = tok.encode("a鑫🦑𝔘").unwrap();
    // Cut the ids inside a character: the held-back bytes come out of `finish` as `decode`
    // gives them (U+FFFD), never from `step`.
    let cut = (1..ids.len())
        .map(|k| &ids[..k])
        .find(|cut| tok.decode(cut, false).unwrap().ends_with('\u{FFFD}'))
        .expect("some character of the text spans two tokens");
    let mut decoder = tok.stream_decoder(false);
    let stepped: String = cut.iter().map(|&id| decoder.step(id).unwrap()).collect();
    assert!(!stepped.contains('\u{FFFD}'));
    assert!(decoder.has_pending());
    let flushed = decoder.finish().unwrap();
    assert_eq!(format!("{stepped}{flushed}"), tok.decode(cut, false).unwrap());
    assert!(flushed.ends_with('\u{FFFD}'));
    assert!(!decoder.has_pending());
    // After finish the decoder starts afresh.
    assert_eq!(decoder.step(ids[0]).unwrap(), "a");
}

#[test]
fn special_tokens_in_text_and_skipping() {
    let Some(tok) = qwen() else { return };
    assert_eq!(tok.vocab_size(), 151_665);
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(151_643));
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(151_644));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(151_645));
    assert_eq!(tok.token_to_id("<tool_call>"), Some(151_657));
    assert_eq!(tok.id_to_token(151_645).as_deref(), Some("<|im_end|>"));
    assert_eq!(tok.id_to_token(9707).as_deref(), Some("Hello"));
    assert_eq!(tok.id_to_token(151_665), None);
    assert!(tok.is_special(151_645));
    assert!(!tok.is_special(9707));

    let ids = tok.encode("<|im_start|>user\nHi<|im_end|>").unwrap();
    assert_eq!(ids.first(), Some(&151_644));
    assert_eq!(ids.last(), Some(&151_645));
    // No BOS/EOS of its own.
    assert_eq!(tok.encode("Hello").unwrap(), vec![9707]);
    assert_eq!(tok.encode("").unwrap(), Vec::<u32>::new());
    assert_eq!(tok.decode(&ids, true).unwrap(), "user\nHi");
    assert_eq!(tok.decode(&ids, false).unwrap(), "<|im_start|>user\nHi<|im_end|>");
    let (streamed, _) = stream(tok, &ids, true);
    assert_eq!(streamed, "user\nHi");
}

#[test]
fn ids_beyond_the_vocabulary_are_errors() {
    let Some(tok) = qwen() else { return };
    // Qwen2.5 checkpoints have 151,936 output rows; ids 151,665.. have no token.
    match tok.decode(&[9707, 151_900], false) {
        Err(Error::UnknownId { id: 151_900, vocab_size: 151_665 }) => {}
        other => panic!("expected UnknownId, got {other:?}"),
    }
    assert_eq!(tok.decode_lossy(&[9707, 151_900, 1879], false), tok.decode(&[9707, 1879], false).unwrap());
    let mut decoder = tok.stream_decoder(false);
    assert_eq!(decoder.step(9707).unwrap(), "Hello");
    assert!(matches!(decoder.step(u32::MAX), Err(Error::UnknownId { .. })));
    // The bad id left the stream as it was.
    assert_eq!(decoder.step(1879).unwrap(), tok.decode(&[1879], false).unwrap());
}
