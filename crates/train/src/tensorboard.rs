//! TensorBoard event files: every metrics line a run writes also goes to
//! `RUN_DIR/tensorboard/events.out.tfevents.*` as scalars, so `tensorboard --logdir RUN_DIR`
//! shows the run (and several runs side by side) as veRL's and TRL's TensorBoard loggers do.
//!
//! The format, written here without TensorFlow: a file of TFRecords (`u64` length, its
//! masked CRC-32C, the bytes, their masked CRC-32C), each an `Event` protocol buffer: first
//! one holding `file_version = "brain.Event:2"`, then one per metrics line with its wall
//! time, step and a `Summary` of `simple_value` scalars. Tags are `train/<key>`, and
//! `eval/<key>` for the held-out evaluations' `eval_<key>`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::Result;
use crate::error::io;

/// The folder of a run directory that holds its event files.
pub const TENSORBOARD_DIR: &str = "tensorboard";

pub struct EventWriter {
    path: PathBuf,
    file: BufWriter<File>,
}

impl EventWriter {
    /// A new event file in `dir` (created if need be). A resumed run writes a new file
    /// beside the old ones; TensorBoard reads them all, and on finding steps again that it
    /// has seen it drops the old ones from there on (its "orphaned data").
    pub fn create(dir: &Path) -> Result<EventWriter> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let host = std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string());
        let host = host.filter(|h| !h.is_empty() && !h.contains('/')).unwrap_or_else(|| "localhost".into());
        let name =
            format!("events.out.tfevents.{}.{host}.{}.{}", now.as_secs(), std::process::id(), now.subsec_nanos());
        let path = dir.join(name);
        let file = File::create(&path).map_err(io(&path))?;
        let mut w = EventWriter { path, file: BufWriter::new(file) };
        let mut event = Vec::new();
        put_double(&mut event, 1, now.as_secs_f64());
        put_bytes(&mut event, 3, b"brain.Event:2");
        w.record(&event)?;
        Ok(w)
    }

    /// One event at `step` holding `scalars` (tag, value), flushed to the file.
    pub fn scalars(&mut self, step: i64, scalars: &[(String, f32)]) -> Result<()> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut summary = Vec::new();
        for (tag, value) in scalars {
            let mut v = Vec::new();
            put_bytes(&mut v, 1, tag.as_bytes());
            put_key(&mut v, 2, 5);
            v.extend_from_slice(&value.to_le_bytes());
            put_bytes(&mut summary, 1, &v);
        }
        let mut event = Vec::new();
        put_double(&mut event, 1, now.as_secs_f64());
        put_key(&mut event, 2, 0);
        put_varint(&mut event, step as u64);
        put_bytes(&mut event, 5, &summary);
        self.record(&event)
    }

    /// A metrics line as scalars: every number but `step` (booleans and strings, such as a
    /// non-finite loss written as text, are left out).
    pub fn line(&mut self, line: &serde_json::Value) -> Result<()> {
        let Some(o) = line.as_object() else { return Ok(()) };
        let Some(step) = o.get("step").and_then(|s| s.as_i64()) else { return Ok(()) };
        let scalars: Vec<(String, f32)> = o
            .iter()
            .filter(|(k, _)| k.as_str() != "step")
            .filter_map(|(k, v)| Some((tag(k), v.as_f64()? as f32)))
            .collect();
        self.scalars(step, &scalars)
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let f = &mut self.file;
        f.write_all(&len)
            .and_then(|_| f.write_all(&masked_crc(&len).to_le_bytes()))
            .and_then(|_| f.write_all(data))
            .and_then(|_| f.write_all(&masked_crc(data).to_le_bytes()))
            .and_then(|_| f.flush())
            .map_err(io(&self.path))
    }
}

/// `eval_accuracy` -> `eval/accuracy`, `loss` -> `train/loss`.
fn tag(key: &str) -> String {
    match key.strip_prefix("eval_") {
        Some(rest) => format!("eval/{rest}"),
        None => format!("train/{key}"),
    }
}

/// TFRecord's checksum: CRC-32C, rotated right by 15 bits, plus a constant.
fn masked_crc(data: &[u8]) -> u32 {
    crc32c::crc32c(data).rotate_right(15).wrapping_add(0xa282_ead8)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A field's key: its number and wire type (0 varint, 1 64-bit, 2 bytes, 5 32-bit).
fn put_key(out: &mut Vec<u8>, field: u32, wire: u32) {
    put_varint(out, u64::from(field << 3 | wire));
}

fn put_double(out: &mut Vec<u8>, field: u32, v: f64) {
    put_key(out, field, 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TFRecord's mask as its format describes it; CRC-32C is Castagnoli's (check value).
    fn mask(crc: u32) -> u32 {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        crc.rotate_right(15).wrapping_add(0xa282_ead8)
    }

    /// A reader written from the format's description, not from the writer: the records
    /// with their checksums checked, then each event's fields.
    fn records(bytes: &[u8]) -> Vec<Vec<u8>> {
        let (mut out, mut at) = (Vec::new(), 0);
        while at < bytes.len() {
            let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            assert_eq!(crc, mask(crc32c::crc32c(&bytes[at..at + 8])), "length checksum");
            let data = &bytes[at + 12..at + 12 + len];
            let crc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
            assert_eq!(crc, mask(crc32c::crc32c(data)), "data checksum");
            out.push(data.to_vec());
            at += 16 + len;
        }
        out
    }

    fn varint(b: &[u8], at: &mut usize) -> u64 {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let byte = b[*at];
            *at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return v;
            }
            shift += 7;
        }
    }

    /// (field number, wire type, payload) of each field of a message.
    fn fields(b: &[u8]) -> Vec<(u64, u64, Vec<u8>)> {
        let (mut out, mut at) = (Vec::new(), 0);
        while at < b.len() {
            let key = varint(b, &mut at);
            let payload = match key & 7 {
                0 => {
                    let start = at;
                    varint(b, &mut at);
                    b[start..at].to_vec()
                }
                1 => {
                    at += 8;
                    b[at - 8..at].to_vec()
                }
                2 => {
                    let n = varint(b, &mut at) as usize;
                    at += n;
                    b[at - n..at].to_vec()
                }
                5 => {
                    at += 4;
                    b[at - 4..at].to_vec()
                }
                w => panic!("wire type {w}"),
            };
            out.push((key >> 3, key & 7, payload));
        }
        out
    }

    #[test]
    fn events_decode_as_tensorboard_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        let line =
            serde_json::json!({"step": 300, "loss": 2.5, "refused": false, "grad_norm": "NaN", "eval_accuracy": 0.25});
        w.line(&line).unwrap();
        w.scalars(-1, &[]).unwrap();
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(files.len(), 1);
        assert!(files[0].file_name().unwrap().to_str().unwrap().starts_with("events.out.tfevents."));
        let recs = records(&std::fs::read(&files[0]).unwrap());
        assert_eq!(recs.len(), 3);
        let first = fields(&recs[0]);
        assert_eq!((first[0].0, first[0].1), (1, 1), "wall_time, a double");
        assert_eq!(first[1], (3, 2, b"brain.Event:2".to_vec()));
        let event = fields(&recs[1]);
        let step = event.iter().find(|f| f.0 == 2).unwrap();
        assert_eq!(varint(&step.2, &mut 0), 300);
        let summary = &event.iter().find(|f| f.0 == 5).unwrap().2;
        let mut values: Vec<(String, f32)> = fields(summary)
            .into_iter()
            .map(|(n, _, v)| {
                assert_eq!(n, 1);
                let f = fields(&v);
                (String::from_utf8(f[0].2.clone()).unwrap(), f32::from_le_bytes(f[1].2[..].try_into().unwrap()))
            })
            .collect();
        values.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(values, [("eval/accuracy".to_string(), 0.25), ("train/loss".to_string(), 2.5)]);
        // A negative step is a ten-byte varint (int64), as protobuf writes it.
        let step = fields(&recs[2]).into_iter().find(|f| f.0 == 2).unwrap();
        assert_eq!(varint(&step.2, &mut 0) as i64, -1);
    }
}
