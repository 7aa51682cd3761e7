//! A decode-step graph the device refuses to capture does not stop the rollouts: the cache
//! decodes eagerly from then on, with the eager results. (A file of its own: the refusal is
//! made by holding a capture open on the device from another thread, which would disturb
//! other GPU tests.)

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use artist_engine::{RolloutConfig, RolloutEngine, SamplingParams};
use artist_model::Qwen2;
use artist_tokenizer::Tokenizer;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/qwen2").join(name)
}

#[test]
fn a_refused_capture_falls_back_to_eager_decoding() {
    // Emulator only: on a GPU the holder's capture would take in this thread's work too
    // (all work on a device goes through one stream).
    let dev = match artist_tensor::cuda::test_backend() {
        Ok(artist_tensor::cuda::Backend::Emulator) => artist_tensor::Device::cuda(0).unwrap(),
        Ok(b) => {
            eprintln!("skipping: the refusal is staged on the emulator only, not on {b:?}");
            return;
        }
        Err(why) => {
            eprintln!("skipping: {why}");
            return;
        }
    };
    let tok = Tokenizer::from_dir(fixture("tiny-gqa")).unwrap();
    let gpu = Qwen2::load_on(&fixture("tiny-gqa"), dev).unwrap();
    let prompts: Vec<Vec<u32>> = vec![tok.encode("Once upon a time").unwrap(), tok.encode("The cat").unwrap()];
    let cfg = RolloutConfig {
        group_size: 2,
        max_turn_tokens: 12,
        max_batch: 4,
        eos_ids: vec![290],
        sampling: SamplingParams { temperature: 0.9, seed: 4, ..Default::default() },
        ..Default::default()
    };
    let run =
        || RolloutEngine { policy: &gpu, tokenizer: &tok, tools: vec![], config: cfg.clone() }.run(&prompts).unwrap().0;
    let free = run();
    // Another thread holds a capture open on the device for the whole run: every capture
    // the engine tries is refused ("already capturing").
    let (hold_tx, hold_rx) = mpsc::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        artist_tensor::cuda::capture(0, || {
            ready_tx.send(()).unwrap();
            hold_rx.recv().unwrap();
            Ok(())
        })
        .map(drop)
    });
    ready_rx.recv().unwrap();
    let refused = run();
    hold_tx.send(()).unwrap();
    holder.join().unwrap().unwrap();
    assert_eq!(free.len(), refused.len());
    for (i, (x, y)) in free.iter().zip(&refused).enumerate() {
        assert_eq!(x.ids, y.ids, "rollout {i}: tokens");
        let bits = |v: &[f32]| v.iter().map(|l| l.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&x.logprobs), bits(&y.logprobs), "rollout {i}: logprobs");
    }
}
