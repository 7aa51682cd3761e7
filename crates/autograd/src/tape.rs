//! The tape, the values it tracks, parameters, gradients and gradient checkpointing.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use artist_tensor::{DType, Result, Shape, Tensor, invalid};
use parking_lot::Mutex;

/// Identifies a parameter for the whole process: gradients and optimiser state are keyed
/// by it, so a frozen reference model and the policy never mix theirs up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(u64);

static NEXT_PARAM: AtomicU64 = AtomicU64::new(0);

/// A named trainable tensor. Clones share the tensor, so an optimiser that writes into
/// `value()` in place updates every model holding the parameter.
#[derive(Debug, Clone)]
pub struct Param {
    id: ParamId,
    name: Arc<str>,
    value: Tensor,
    trainable: bool,
}

impl Param {
    pub fn new(name: impl Into<Arc<str>>, value: Tensor) -> Param {
        Param { id: ParamId(NEXT_PARAM.fetch_add(1, Ordering::Relaxed)), name: name.into(), value, trainable: true }
    }
    pub fn id(&self) -> ParamId {
        self.id
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn value(&self) -> &Tensor {
        &self.value
    }
    pub fn trainable(&self) -> bool {
        self.trainable
    }
    /// Frozen parameters enter a training forward as constants and get no gradient.
    pub fn set_trainable(&mut self, trainable: bool) {
        self.trainable = trainable;
    }
}

/// Where a value came from, for backward.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Origin {
    /// Not differentiated: inputs, masks, anything computed without a tape.
    Const,
    /// The output of the tape's node with this index.
    Node(usize),
    /// A parameter: its gradient goes to [`Gradients`].
    Param(ParamId),
    /// The k-th input of a recomputed block (see [`checkpoint`]).
    Input(usize),
}

/// Given the gradient of a node's output, the gradients of its inputs (`None` where an
/// input needs none; `needs[i]` says which do). Gets the parameter gradients too, for
/// nodes that run a backward of their own ([`checkpoint`]).
pub(crate) type BackwardFn = Box<dyn FnOnce(Tensor, &[bool], &mut Gradients) -> Result<Vec<Option<Tensor>>> + Send>;

struct Node {
    op: &'static str,
    /// Runs even when no input needs a gradient: a recomputed block has parameters inside.
    always: bool,
    inputs: Vec<(Origin, Shape)>,
    /// Parameters whose gradients this node's backward adds without their being inputs
    /// (the parameters inside a recomputed block).
    inner_params: Vec<ParamId>,
    /// A `narrow` of its one input along `(dim, start)`: the tape adds the output's gradient
    /// into that slice of the input's gradient itself, and `backward` is not called.
    slice: Option<(usize, usize)>,
    backward: BackwardFn,
}

/// Told, during [`Tape::backward_with`], that a parameter's gradient is final.
pub type ReadyHook<'a> = dyn FnMut(ParamId, &Gradients) + 'a;

/// Called by `backward_from` with the tape's own gradients when a parameter's is final.
type LocalHook<'a> = dyn FnMut(ParamId, &mut Gradients) -> Result<()> + 'a;

#[derive(Default)]
struct TapeInner {
    nodes: Vec<Node>,
}

/// A record of differentiable ops, shared by the `Var`s computed on it.
#[derive(Clone, Default)]
pub struct Tape(Arc<Mutex<TapeInner>>);

impl std::fmt::Debug for Tape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tape({} nodes)", self.0.lock().nodes.len())
    }
}

impl Tape {
    pub fn new() -> Tape {
        Tape::default()
    }

    /// The number of ops recorded so far.
    pub fn len(&self) -> usize {
        self.0.lock().nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A parameter as a tracked leaf (a constant when it is frozen).
    pub fn param(&self, p: &Param) -> Var {
        if !p.trainable {
            return Var::constant(p.value.clone());
        }
        Var { value: p.value.clone(), origin: Origin::Param(p.id), tape: Some(self.clone()) }
    }

    pub(crate) fn input(&self, k: usize, value: Tensor) -> Var {
        Var { value, origin: Origin::Input(k), tape: Some(self.clone()) }
    }

    fn same(&self, other: &Tape) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    fn push(&self, node: Node) -> usize {
        let mut t = self.0.lock();
        t.nodes.push(node);
        t.nodes.len() - 1
    }

    /// Gradients of the scalar `loss` with respect to every trainable parameter it
    /// depends on. Consumes the tape's record (a tape serves one backward).
    pub fn backward(&self, loss: &Var) -> Result<Gradients> {
        let _range = artist_tensor::nvtx::range("backward");
        if loss.value.elem_count() != 1 {
            return Err(invalid!("backward", "the loss must have one element, not shape {}", loss.value.shape()));
        }
        let seed = Tensor::ones(loss.value.shape().clone(), DType::F32, loss.value.device())?;
        let mut grads = Gradients::default();
        self.backward_from(loss, seed, &mut grads, 0, None)?;
        Ok(grads)
    }

    /// [`backward`](Tape::backward) added into `total` (gradient accumulation: the same
    /// bits as `total.merge(tape.backward(loss)?)`), telling `on_ready` about each
    /// trainable parameter recorded on this tape as soon as no op still to be
    /// differentiated can change its gradient: `total.get(id)` then holds its final value
    /// (none when no gradient reached it). A data-parallel trainer starts all-reducing a
    /// bucket of gradients from there while backward goes on through the layers below.
    ///
    /// Parameters reach `on_ready` in the order their first use is undone (the last
    /// layer's first), each once; ones recorded only after `loss` are not reported.
    pub fn backward_with(&self, loss: &Var, total: &mut Gradients, on_ready: &mut ReadyHook<'_>) -> Result<()> {
        let _range = artist_tensor::nvtx::range("backward");
        if loss.value.elem_count() != 1 {
            return Err(invalid!("backward", "the loss must have one element, not shape {}", loss.value.shape()));
        }
        let seed = Tensor::ones(loss.value.shape().clone(), DType::F32, loss.value.device())?;
        let mut local = Gradients::default();
        let mut ready = |id: ParamId, local: &mut Gradients| -> Result<()> {
            if let Some(g) = local.remove(id) {
                total.add(id, g)?;
            }
            on_ready(id, total);
            Ok(())
        };
        self.backward_from(loss, seed, &mut local, 0, Some(&mut ready))?;
        // Only when the loss is itself a parameter does a gradient arrive without a hook.
        total.merge(local)
    }

    /// Backpropagates `seed` (the gradient of `out`) through the record, adding parameter
    /// gradients to `grads`; returns the gradients of the first `n_inputs` input leaves.
    pub(crate) fn backward_from(
        &self,
        out: &Var,
        seed: Tensor,
        grads: &mut Gradients,
        n_inputs: usize,
        mut on_ready: Option<&mut LocalHook<'_>>,
    ) -> Result<Vec<Option<Tensor>>> {
        if let Some(t) = &out.tape
            && !t.same(self)
        {
            return Err(invalid!("backward", "the value was recorded on another tape"));
        }
        let mut nodes = std::mem::take(&mut self.0.lock().nodes);
        let mut inputs: Vec<Option<Acc>> = Vec::new();
        inputs.resize_with(n_inputs, || None);
        let into_tensors = |inputs: Vec<Option<Acc>>| inputs.into_iter().map(|a| a.map(|a| a.t)).collect();
        let last = match out.origin {
            Origin::Node(i) => i,
            origin => {
                route(origin, seed, None, &mut [], &mut inputs, grads)?;
                return Ok(into_tensors(inputs));
            }
        };
        nodes.truncate(last + 1);
        // A parameter's gradient is final once the backward passes the first node that
        // uses it (the sweep runs from the last node down).
        let mut ready_at: Vec<Vec<ParamId>> = Vec::new();
        if on_ready.is_some() {
            ready_at.resize_with(last + 1, Vec::new);
            let mut seen = std::collections::HashSet::new();
            for (i, node) in nodes.iter().enumerate() {
                let direct = node.inputs.iter().filter_map(|(o, _)| match o {
                    Origin::Param(id) => Some(*id),
                    _ => None,
                });
                for id in direct.chain(node.inner_params.iter().copied()) {
                    if seen.insert(id) {
                        ready_at[i].push(id);
                    }
                }
            }
        }
        let mut node_grads: Vec<Option<Acc>> = Vec::new();
        node_grads.resize_with(last + 1, || None);
        node_grads[last] = Some(Acc { t: seed, owned: false });
        while let Some(node) = nodes.pop() {
            let i = nodes.len();
            Tape::backward_node(node, i, &mut node_grads, &mut inputs, grads)?;
            if let Some(hook) = on_ready.as_deref_mut() {
                for id in std::mem::take(&mut ready_at[i]) {
                    hook(id, grads)?;
                }
            }
        }
        Ok(into_tensors(inputs))
    }

    /// Differentiates node `i`, routing its inputs' gradients.
    fn backward_node(
        node: Node,
        i: usize,
        node_grads: &mut [Option<Acc>],
        inputs: &mut [Option<Acc>],
        grads: &mut Gradients,
    ) -> Result<()> {
        // Dropping a node without a gradient frees what it saved, too.
        let Some(Acc { t: g, .. }) = node_grads[i].take() else { return Ok(()) };
        let needs: Vec<bool> = node.inputs.iter().map(|(o, _)| !matches!(o, Origin::Const)).collect();
        if !node.always && !needs.iter().any(|&n| n) {
            return Ok(());
        }
        if let (Some((dim, start)), [(origin, shape)]) = (node.slice, &node.inputs[..]) {
            return route(*origin, g, Some((shape, (dim, start))), node_grads, inputs, grads);
        }
        let outs = (node.backward)(g, &needs, grads)?;
        if outs.len() != node.inputs.len() {
            return Err(invalid!(
                "backward",
                "{} returned {} gradients for {} inputs",
                node.op,
                outs.len(),
                node.inputs.len()
            ));
        }
        for ((origin, shape), g) in node.inputs.iter().zip(outs) {
            let Some(g) = g else { continue };
            if g.shape() != shape {
                return Err(invalid!(
                    "backward",
                    "{} gave a gradient of shape {} for an input of shape {shape}",
                    node.op,
                    g.shape()
                ));
            }
            route(*origin, g, None, node_grads, inputs, grads)?;
        }
        Ok(())
    }
}

/// A gradient being summed for one node or input. `owned` when the tape made its storage
/// (a sum, a copy, a zero-filled slice's parent), so it may be written in place; an op's
/// result may share storage with another gradient (a view of it), and is not.
struct Acc {
    t: Tensor,
    owned: bool,
}

fn accumulate(slot: &mut Option<Acc>, g: Tensor) -> Result<()> {
    *slot = Some(match slot.take() {
        None => Acc { t: g, owned: false },
        Some(acc) => Acc { t: acc.t.add(&g)?, owned: true },
    });
    Ok(())
}

/// Adds `g` into the slice `(dim, start)` of the gradient in `slot` (of `shape`): the
/// first slice zero-fills the gradient once, later ones add into their slice in place.
/// The backward of `narrow` used to build a zero-filled gradient of the whole input for
/// every slice and add them up: a pass over the whole input per slice, where a batch of
/// sequences packed into one tensor takes one slice per sequence. The values are the
/// same, up to the sign of zeros (0 + -0 is +0).
fn accumulate_slice(slot: &mut Option<Acc>, g: Tensor, shape: &Shape, (dim, start): (usize, usize)) -> Result<()> {
    let len = g.dims()[dim];
    let acc = match slot.take() {
        None => {
            let full = Tensor::zeros(shape.clone(), DType::F32, g.device())?;
            full.narrow(dim as isize, start, len)?.copy_from(&g)?;
            *slot = Some(Acc { t: full, owned: true });
            return Ok(());
        }
        Some(Acc { t, owned: true }) if t.is_contiguous() => t,
        Some(Acc { t, .. }) => t.copy()?,
    };
    // Added into the slice in place: one pass over it.
    acc.narrow(dim as isize, start, len)?.add_assign(&g)?;
    *slot = Some(Acc { t: acc, owned: true });
    Ok(())
}

/// Sends `g`, the gradient of an input with this `origin`, where it is summed: the whole
/// input's gradient, or with `slice` the gradient of the slice `(dim, start)` of an input
/// of that shape.
fn route(
    origin: Origin,
    g: Tensor,
    slice: Option<(&Shape, (usize, usize))>,
    nodes: &mut [Option<Acc>],
    inputs: &mut [Option<Acc>],
    grads: &mut Gradients,
) -> Result<()> {
    let g = if g.dtype() == DType::F32 { g } else { g.to_dtype(DType::F32)? };
    let add = |slot: &mut Option<Acc>, g: Tensor| match slice {
        None => accumulate(slot, g),
        Some((shape, at)) => accumulate_slice(slot, g, shape, at),
    };
    match origin {
        Origin::Const => Ok(()),
        Origin::Node(j) => add(&mut nodes[j], g),
        Origin::Input(k) => match inputs.get_mut(k) {
            Some(slot) => add(slot, g),
            None => Err(invalid!("backward", "input leaf {k} does not belong to this backward")),
        },
        Origin::Param(id) if slice.is_none() => grads.add(id, g),
        Origin::Param(id) => {
            let mut full = None;
            add(&mut full, g)?;
            grads.add(id, full.expect("filled above").t)
        }
    }
}

/// A tensor and where it came from. Cloning is cheap (the tensor is shared).
#[derive(Clone)]
pub struct Var {
    pub(crate) value: Tensor,
    pub(crate) origin: Origin,
    pub(crate) tape: Option<Tape>,
}

impl std::fmt::Debug for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Var({:?}, {:?})", self.value, self.origin)
    }
}

impl Var {
    /// A value that is not differentiated.
    pub fn constant(value: Tensor) -> Var {
        Var { value, origin: Origin::Const, tape: None }
    }

    pub fn value(&self) -> &Tensor {
        &self.value
    }

    pub fn into_value(self) -> Tensor {
        self.value
    }

    /// Whether gradients flow back through this value.
    pub fn is_tracked(&self) -> bool {
        self.tape.is_some()
    }

    /// The same value, cut from the tape.
    pub fn detach(&self) -> Var {
        Var::constant(self.value.clone())
    }

    pub fn shape(&self) -> &Shape {
        self.value.shape()
    }

    pub fn dims(&self) -> &[usize] {
        self.value.dims()
    }

    /// The tape shared by the tracked ones among `inputs` (an error if two tapes meet).
    fn tape_of(inputs: &[&Var]) -> Result<Option<Tape>> {
        let mut found: Option<&Tape> = None;
        for v in inputs {
            if let Some(t) = &v.tape {
                match found {
                    Some(f) if !f.same(t) => return Err(invalid!("autograd", "values from two different tapes meet")),
                    _ => found = Some(t),
                }
            }
        }
        Ok(found.cloned())
    }

    /// The result of an op: `value`, recorded with `backward` when an input is tracked.
    /// Without a tape, `backward` is dropped unused (never boxed).
    pub(crate) fn record<F>(op: &'static str, inputs: &[&Var], value: Tensor, backward: F) -> Result<Var>
    where
        F: FnOnce(Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + Send + 'static,
    {
        match Var::tape_of(inputs)? {
            None => Ok(Var::constant(value)),
            Some(tape) => {
                let b: BackwardFn = Box::new(move |g, needs, _| backward(g, needs));
                Ok(Var::push(op, false, tape, inputs, value, Vec::new(), b))
            }
        }
    }

    fn push(
        op: &'static str,
        always: bool,
        tape: Tape,
        inputs: &[&Var],
        value: Tensor,
        inner_params: Vec<ParamId>,
        backward: BackwardFn,
    ) -> Var {
        let inputs = inputs
            .iter()
            .map(|v| (if v.tape.is_some() { v.origin } else { Origin::Const }, v.value.shape().clone()))
            .collect();
        let i = tape.push(Node { op, always, inputs, inner_params, slice: None, backward });
        Var { value, origin: Origin::Node(i), tape: Some(tape) }
    }

    /// `value`, the slice `(dim, start)` of `input` along `dim`: its gradient goes into that
    /// slice of the input's gradient ([`accumulate_slice`]).
    pub(crate) fn record_slice(input: &Var, value: Tensor, dim: usize, start: usize) -> Result<Var> {
        match Var::tape_of(&[input])? {
            None => Ok(Var::constant(value)),
            Some(tape) => {
                let origin = if input.tape.is_some() { input.origin } else { Origin::Const };
                let node = Node {
                    op: "narrow",
                    always: false,
                    inputs: vec![(origin, input.value.shape().clone())],
                    inner_params: Vec::new(),
                    slice: Some((dim, start)),
                    backward: Box::new(|_, _, _| Err(invalid!("backward", "narrow's gradient is routed by the tape"))),
                };
                let i = tape.push(node);
                Ok(Var { value, origin: Origin::Node(i), tape: Some(tape) })
            }
        }
    }
}

/// Parameter gradients, f32, keyed by [`ParamId`].
#[derive(Debug, Default)]
pub struct Gradients {
    map: HashMap<ParamId, Tensor>,
}

impl Gradients {
    pub fn get(&self, id: ParamId) -> Option<&Tensor> {
        self.map.get(&id)
    }

    pub fn remove(&mut self, id: ParamId) -> Option<Tensor> {
        self.map.remove(&id)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (ParamId, &Tensor)> {
        self.map.iter().map(|(k, v)| (*k, v))
    }

    /// Adds `g` to the gradient of `id` (in place when one is already held).
    pub fn add(&mut self, id: ParamId, g: Tensor) -> Result<()> {
        match self.map.get(&id) {
            Some(acc) => acc.add_assign(&g),
            None => {
                // Own the storage: later accumulation writes into it.
                let g = g.copy()?;
                self.map.insert(id, g);
                Ok(())
            }
        }
    }

    /// Adds every gradient of `other` (gradient accumulation over micro-batches).
    pub fn merge(&mut self, other: Gradients) -> Result<()> {
        for (id, g) in other.map {
            self.add(id, g)?;
        }
        Ok(())
    }

    /// Multiplies every gradient by `s`, in place.
    pub fn scale(&mut self, s: f32) -> Result<()> {
        for g in self.map.values() {
            g.scale_in_place(s)?;
        }
        Ok(())
    }

    /// The L2 norm of all gradients together (accumulated in f64).
    pub fn global_norm(&self) -> Result<f64> {
        let mut ids: Vec<&ParamId> = self.map.keys().collect();
        ids.sort(); // a fixed summation order: the same gradients give the same norm bits
        let mut sum = 0f64;
        for id in ids {
            sum += self.map[id].sum_squares_f64()?;
        }
        Ok(sum.sqrt())
    }
}

/// How model code gets its parameters: tracked on a tape when training, constants when
/// not. `checkpointing` asks blocks to recompute their activations in backward.
#[derive(Debug, Clone, Default)]
pub struct Ctx {
    tape: Option<Tape>,
    checkpointing: bool,
    /// The dtype attention computes in, when not its inputs' own (see
    /// [`Ctx::with_attention_dtype`]).
    attention_dtype: Option<DType>,
    /// The dtype linear layers multiply in, when not f32 (see [`Ctx::with_matmul_dtype`]).
    matmul_dtype: Option<DType>,
    /// Without a tape: collects the trainable parameters the model asks for (a
    /// checkpointed block's forward, so that backward knows which gradients it adds).
    used: Option<Arc<Mutex<Vec<ParamId>>>>,
}

impl Ctx {
    /// No tape: ops cost what the tensor ops cost.
    pub fn inference() -> Ctx {
        Ctx::default()
    }

    pub fn training(tape: &Tape) -> Ctx {
        Ctx { tape: Some(tape.clone()), ..Ctx::default() }
    }

    pub fn with_checkpointing(mut self, on: bool) -> Ctx {
        self.checkpointing = on;
        self
    }

    /// Asks models to compute attention in `dtype` (`Some(BF16)`: queries, keys and values
    /// rounded to bf16, which on a GPU runs the tensor-core kernels; the output widened back),
    /// as autocast does; `None` (the default) keeps their own dtype. Checkpointed blocks
    /// recompute with the same choice.
    pub fn with_attention_dtype(mut self, dtype: Option<DType>) -> Ctx {
        self.attention_dtype = dtype;
        self
    }

    pub fn attention_dtype(&self) -> Option<DType> {
        self.attention_dtype
    }

    /// Asks models to run their linear layers in `dtype` (`Some(BF16)`: activations and
    /// weights rounded to bf16, products summed in f32 into an f32 result, on a GPU a
    /// tensor-core GEMM; [`Var::linear_in`]), as autocast does; `None` (the default)
    /// multiplies in f32. Checkpointed blocks recompute with the same choice.
    pub fn with_matmul_dtype(mut self, dtype: Option<DType>) -> Ctx {
        self.matmul_dtype = dtype;
        self
    }

    pub fn matmul_dtype(&self) -> Option<DType> {
        self.matmul_dtype
    }

    pub fn tape(&self) -> Option<&Tape> {
        self.tape.as_ref()
    }

    pub fn is_training(&self) -> bool {
        self.tape.is_some()
    }

    pub fn checkpointing(&self) -> bool {
        self.checkpointing && self.tape.is_some()
    }

    pub fn param(&self, p: &Param) -> Var {
        match &self.tape {
            Some(t) => t.param(p),
            None => {
                if let Some(used) = &self.used
                    && p.trainable
                {
                    used.lock().push(p.id);
                }
                Var::constant(p.value.clone())
            }
        }
    }
}

/// Runs `block` on `inputs` keeping only the inputs for backward, where the block runs
/// again on a tape of its own and is differentiated then (gradient checkpointing: one
/// saved tensor per block instead of every activation inside it).
///
/// `block` must compute the same function each time it runs (no sampling inside); its
/// parameters come from the `Ctx` it is given.
pub fn checkpoint<F>(ctx: &Ctx, inputs: &[&Var], block: F) -> Result<Var>
where
    F: Fn(&Ctx, &[Var]) -> Result<Var> + Send + 'static,
{
    let Some(tape) = ctx.tape() else {
        let vars: Vec<Var> = inputs.iter().map(|v| (*v).clone()).collect();
        return block(ctx, &vars);
    };
    let saved: Vec<Tensor> = inputs.iter().map(|v| v.value.clone()).collect();
    let consts: Vec<Var> = saved.iter().map(|t| Var::constant(t.clone())).collect();
    let used = Arc::new(Mutex::new(Vec::new()));
    let (attention_dtype, matmul_dtype) = (ctx.attention_dtype, ctx.matmul_dtype);
    let recording = Ctx { used: Some(used.clone()), attention_dtype, matmul_dtype, ..Ctx::inference() };
    let value = block(&recording, &consts)?.value;
    drop(consts);
    let mut inner_params = std::mem::take(&mut *used.lock());
    inner_params.sort();
    inner_params.dedup();
    let backward: BackwardFn = Box::new(move |g, needs, grads| {
        let sub = Tape::new();
        let leaves: Vec<Var> = saved
            .into_iter()
            .zip(needs)
            .enumerate()
            .map(|(k, (t, &need))| if need { sub.input(k, t) } else { Var::constant(t) })
            .collect();
        let ctx = Ctx::training(&sub).with_attention_dtype(attention_dtype).with_matmul_dtype(matmul_dtype);
        let out = block(&ctx, &leaves)?;
        drop(leaves);
        let n = needs.len();
        sub.backward_from(&out, g, grads, n, None)
    });
    Ok(Var::push("checkpoint", true, tape.clone(), inputs, value, inner_params, backward))
}
