//! The data-parallel step shared by the trainers: gradients accumulated over micro-batches,
//! summed over ranks by an all-reduce that overlaps the last micro-batch's backward.

use artist_autograd::{Gradients, Param, Tape, Var};
use artist_dist::{
    Communicator, DEFAULT_BUCKET_ELEMS, Reduce, all_reduce_gradients_overlapped, all_reduce_gradients_sum,
};

use crate::Result;

/// Accumulates a step's gradients micro-batch by micro-batch, and with a communicator
/// sums them over ranks, the all-reduce running during the last micro-batch's backward.
pub(crate) struct StepGrads<'a, 'c> {
    pub grads: Gradients,
    comm: Option<&'a mut (dyn Communicator + 'c)>,
    params: &'a [&'a Param],
    overlap: bool,
    reduced: bool,
}

impl<'a, 'c> StepGrads<'a, 'c> {
    /// `overlap`: the run's setting; unset, overlap where the parameters are on a GPU.
    pub fn new(comm: Option<&'a mut (dyn Communicator + 'c)>, params: &'a [&'a Param], overlap: Option<bool>) -> Self {
        let on_gpu = params.first().is_some_and(|p| !p.value().device().is_cpu());
        StepGrads { grads: Gradients::default(), comm, params, overlap: overlap.unwrap_or(on_gpu), reduced: false }
    }

    /// Backward of one micro-batch's `loss`; `last` says no micro-batch of this step
    /// follows on this rank.
    pub fn backward(&mut self, tape: &Tape, loss: &Var, last: bool) -> Result<()> {
        match self.comm.as_deref_mut() {
            Some(comm) if last && self.overlap => {
                all_reduce_gradients_overlapped(
                    comm,
                    self.params,
                    &mut self.grads,
                    DEFAULT_BUCKET_ELEMS,
                    Reduce::Sum,
                    |g, ready| tape.backward_with(loss, g, ready).map_err(crate::Error::from),
                )?;
                self.reduced = true;
            }
            _ => self.grads.merge(tape.backward(loss)?)?,
        }
        Ok(())
    }

    /// The step's gradients, summed over ranks (a rank with no micro-batch joins here).
    pub fn finish(mut self) -> Result<Gradients> {
        if let Some(comm) = self.comm.as_deref_mut()
            && !self.reduced
        {
            all_reduce_gradients_sum(comm, self.params, &mut self.grads, DEFAULT_BUCKET_ELEMS)?;
        }
        Ok(self.grads)
    }
}

/// Every rank's `lines` (JSON values, as the logs hold them) on every rank, concatenated in
/// rank order; `lines` itself without a communicator. The bytes travel two to an f32 (exact
/// there), after an all-gather of their lengths.
/// Every rank's `values` (of any lengths, each under 2^24), concatenated in rank order; a
/// single process's own without a communicator.
pub(crate) fn gather_f32s(values: Vec<f32>, comm: Option<&mut (dyn Communicator + '_)>) -> Result<Vec<f32>> {
    let Some(comm) = comm.filter(|c| c.world_size() > 1) else { return Ok(values) };
    if values.len() >= 1 << 24 {
        return Err(crate::Error::Config(format!("{} values on one rank: too many to gather", values.len())));
    }
    let lens = comm.all_gather(&[values.len() as f32])?;
    let most = lens.iter().fold(0f32, |m, &l| m.max(l)) as usize;
    let mut padded = values;
    padded.resize(most, 0.0);
    let all = comm.all_gather(&padded)?;
    Ok(lens.iter().enumerate().flat_map(|(rank, &len)| all[rank * most..rank * most + len as usize].to_vec()).collect())
}

pub(crate) fn gather_json_lines(
    lines: Vec<serde_json::Value>,
    comm: Option<&mut (dyn Communicator + '_)>,
) -> Result<Vec<serde_json::Value>> {
    let Some(comm) = comm.filter(|c| c.world_size() > 1) else { return Ok(lines) };
    let mut bytes = Vec::new();
    for line in &lines {
        serde_json::to_writer(&mut bytes, line).expect("JSON");
        bytes.push(b'\n');
    }
    if bytes.len() >= 1 << 24 {
        return Err(crate::Error::Config(format!(
            "{} bytes of log lines on one rank: too many to gather",
            bytes.len()
        )));
    }
    let lens = comm.all_gather(&[bytes.len() as f32])?;
    let most = lens.iter().fold(0f32, |m, &l| m.max(l)) as usize;
    let mut packed = vec![0f32; most.div_ceil(2)];
    for (i, pair) in bytes.chunks(2).enumerate() {
        packed[i] = f32::from(u16::from_le_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]));
    }
    let all = comm.all_gather(&packed)?;
    let mut out = Vec::new();
    for (rank, len) in lens.iter().enumerate() {
        let words = &all[rank * packed.len()..(rank + 1) * packed.len()];
        let mut text: Vec<u8> = words.iter().flat_map(|&w| (w as u16).to_le_bytes()).collect();
        text.truncate(*len as usize);
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            out.push(
                serde_json::from_slice(line)
                    .map_err(|e| crate::Error::Config(format!("rank {rank}'s log line did not arrive whole: {e}")))?,
            );
        }
    }
    Ok(out)
}
