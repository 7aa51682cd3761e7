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
