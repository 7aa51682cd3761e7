//! `StreamDecoder` on a SentencePiece-style tokenizer (Llama/Mistral's decoder: `▁` for spaces,
//! byte-fallback tokens `<0xE4>` for characters outside the vocabulary, one leading space
//! stripped). Unlike byte-level BPE, decoding a token there depends on what precedes it, so this
//! checks that the stream keeps the right context. Built in memory; needs no shared files.

mod common;

use artist_tokenizer::{Error, Tokenizer};
use common::stream;
use serde_json::json;

fn sentencepiece_like() -> Tokenizer {
    let mut vocab = serde_json::Map::new();
    for (i, t) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
        vocab.insert((*t).to_owned(), json!(i));
    }
    for b in 0..=255u32 {
        vocab.insert(format!("<0x{b:02X}>"), json!(3 + b));
    }
    for (i, t) in ["▁Hello", "▁world", "▁", "Hello", "!"].iter().enumerate() {
        vocab.insert((*t).to_owned(), json!(259 + i));
    }
    let special = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    let config = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": null, "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                  "vocab": vocab, "merges": []},
    });
    Tokenizer::from_bytes(config.to_string().as_bytes()).unwrap()
}

const HELLO: u32 = 259;
const WORLD: u32 = 260;
const BANG: u32 = 263;
/// `<0xNN>` byte-fallback token.
fn byte(b: u8) -> u32 {
    3 + u32::from(b)
}

#[test]
fn context_dependent_decoder_streams_like_full_decode() {
    let tok = sentencepiece_like();
    let mut ids = vec![1, HELLO, WORLD];
    ids.extend("世".bytes().map(byte));
    ids.extend([WORLD, BANG]);
    ids.extend("🦀".bytes().map(byte));
    ids.extend([2, WORLD]);
    for skip_special in [false, true] {
        let full = tok.decode(&ids, skip_special).unwrap();
        let (streamed, chunks) = stream(&tok, &ids, skip_special);
        assert_eq!(streamed, full, "skip_special = {skip_special}, chunks {chunks:?}");
        assert!(chunks.iter().all(|c| !c.contains('\u{FFFD}')), "{chunks:?}");
    }
    assert_eq!(tok.decode(&ids, true).unwrap(), "Hello world世 world!🦀 world");
    let (_, chunks) = stream(&tok, &ids, true);
    let expected =
        ["", "Hello", " world", "", "", "世", " world", "!", "", "", "", "🦀", "", " world", ""].map(str::to_owned);
    assert_eq!(chunks, expected);
}

#[test]
fn leading_skipped_special_then_word() {
    let tok = sentencepiece_like();
    for ids in [vec![1, WORLD, HELLO], vec![HELLO, 2, 2, WORLD], vec![2]] {
        let (streamed, _) = stream(&tok, &ids, true);
        assert_eq!(streamed, tok.decode(&ids, true).unwrap(), "{ids:?}");
    }
}

#[test]
fn invalid_bytes_are_emitted_once_complete_text_follows() {
    let tok = sentencepiece_like();
    // A lone continuation byte is invalid UTF-8 whatever follows: it decodes to U+FFFD, which
    // the stream emits once later text shows it is not an incomplete tail.
    let ids = [HELLO, byte(0x80), WORLD];
    let full = tok.decode(&ids, false).unwrap();
    assert!(full.contains('\u{FFFD}'));
    assert_eq!(stream(&tok, &ids, false).0, full);
}

#[test]
fn unknown_ids_are_errors() {
    let tok = sentencepiece_like();
    assert_eq!(tok.vocab_size(), 264);
    assert!(matches!(tok.decode(&[HELLO, 264], false), Err(Error::UnknownId { id: 264, vocab_size: 264 })));
    // The lossy decode leaves the id out, as Hugging Face's decoders do.
    assert_eq!(tok.decode_lossy(&[HELLO, 264, HELLO], false), tok.decode(&[HELLO, HELLO], false).unwrap());
    assert_eq!(tok.decode_lossy(&[264, 10_000], false), "");
    let mut decoder = tok.stream_decoder(false);
    assert!(matches!(decoder.step(10_000), Err(Error::UnknownId { .. })));
    assert_eq!(decoder.step(HELLO).unwrap(), "Hello");
    assert!(matches!(Tokenizer::from_bytes(b"not json"), Err(Error::Load { .. })));
}
