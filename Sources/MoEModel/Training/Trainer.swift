// Continued pretraining: seeded random windows of a token stream, gradients
// accumulated over a batch of sequences, global-norm clipping, AdamW with
// decoupled weight decay, warmup + cosine (or constant) learning rate, and
// optimizer state that resumes exactly.

import MoESupport
import MoEFormats
#if canImport(Glibc)
import Glibc
#endif
import CMoECPU
import MoEKernelCode
import MoELayer
import MoERuntime

/// Which parameters a trainer updates.
public enum TrainOnly: Int32, Sendable, CaseIterable {
  case all = 0
  /// MoE layers (routers and experts); attention, norms, dense layers and embeddings frozen.
  case moe = 1
  /// Routers only.
  case routers = 2
}

public enum LRSchedule: Int32, Sendable, CaseIterable {
  /// Linear warmup, then cosine from lr to minLR at the last step.
  case cosine = 0
  /// Linear warmup, then lr.
  case constant = 1
}

public struct TrainerOptions: Sendable {
  /// Tokens per training sequence (each predicts seqLen tokens).
  public var seqLen = 256
  /// Sequences per step (gradients accumulated over them).
  public var batch = 4
  /// Sequences per forward/backward pass (0 = the whole batch at once): a
  /// smaller micro-batch bounds the activations' memory; the passes' gradients
  /// add up to the batch's.
  public var microBatch = 0
  /// Keep only each block's input in the forward and recompute the block's
  /// activations during backward: less memory, about one more forward of time.
  public var recompute = false
  /// Precision of the weight products forward and backward: f32, or bf16
  /// operands with f32 sums (mixed precision; weights, gradients and the
  /// optimizer state stay f32).
  public var precision = ComputePrecision.f32
  /// Total steps, for the schedule.
  public var steps = 100
  public var lr: Float = 2e-4
  public var minLR: Float = 2e-5
  public var warmup = 0
  public var schedule = LRSchedule.cosine
  public var beta1: Float = 0.9
  public var beta2: Float = 0.95
  public var eps: Float = 1e-8
  /// Decoupled weight decay on matrices (not on norms and biases).
  public var weightDecay: Float = 0.1
  /// Global gradient-norm clip (0 = off).
  public var clip: Float = 1
  public var balanceCoef: Float = 0.02
  public var zCoef: Float = 0.001
  public var trainOnly = TrainOnly.all
  public var seed: UInt64 = 0
  /// Fraction of the tokens, at the end, held out for evaluation.
  public var evalFraction: Double = 0.05
  /// Held-out windows evaluated by evaluateHeldOut (at most).
  public var evalWindows = 8
  /// A step whose loss or gradient norm is NaN or infinite: an error, or skipped.
  public var onNonFinite = NonFinitePolicy.error

  public init() {}

  /// Most steps of a run: AdamW's bias correction and the warmup count steps in f32, exact up to 2^24.
  public static let maxSteps = 1 << 24
  /// Most tokens (batch x seq_len) one step may process: a million tokens is
  /// already minutes to hours of CPU time per step.
  public static let maxTokensPerStep = 1 << 20
  /// Most held-out windows per evaluation (each one is a forward pass).
  public static let maxEvalWindows = 1 << 16

  package func validate() throws {
    guard seqLen >= 1, batch >= 1 else {
      throw MoEError.invalid("seq_len and batch must be >= 1 (got \(seqLen) and \(batch))")
    }
    let (tokens, overflow) = seqLen.multipliedReportingOverflow(by: batch)
    guard !overflow, tokens <= Self.maxTokensPerStep else {
      throw MoEError.invalid("batch x seq_len is \(batch) x \(seqLen) tokens per step; at most \(Self.maxTokensPerStep) are allowed: a larger step would run for hours (use more steps instead)")
    }
    guard microBatch >= 0, microBatch <= batch else {
      throw MoEError.invalid("micro_batch is \(microBatch); it must be in 0...batch (\(batch)), 0 meaning the whole batch in one pass")
    }
    guard steps >= 1, steps <= Self.maxSteps else {
      throw MoEError.invalid("steps is \(steps); it must be in 1...\(Self.maxSteps) (AdamW's bias correction counts steps in f32, exact up to 2^24)")
    }
    guard warmup >= 0, warmup <= steps else {
      throw MoEError.invalid("warmup is \(warmup); it must be in 0...steps (\(steps)), or the learning rate never reaches lr")
    }
    guard evalWindows >= 1, evalWindows <= Self.maxEvalWindows else {
      throw MoEError.invalid("eval_windows is \(evalWindows); it must be in 1...\(Self.maxEvalWindows) (each window is a forward pass over seq_len tokens)")
    }
    guard lr.isFinite, lr >= 0, lr <= 1 else {
      throw MoEError.invalid("lr is \(lr); it must be in [0, 1] (AdamW moves each weight by about lr per step)")
    }
    guard minLR.isFinite, minLR >= 0, schedule == .constant || minLR <= lr else {
      throw MoEError.invalid("min_lr is \(minLR); it must be in [0, lr] (lr is \(lr)): the cosine schedule decays from lr to min_lr")
    }
    guard eps.isFinite, eps > 0, eps <= 1 else {
      throw MoEError.invalid("eps is \(eps); it must be in (0, 1]: AdamW divides by sqrt(v) + eps, and v is 0 wherever the gradients have been 0, so eps = 0 makes NaN weights")
    }
    guard weightDecay.isFinite, weightDecay >= 0, weightDecay <= 1, lr * weightDecay < 1 else {
      throw MoEError.invalid("weight_decay is \(weightDecay); it must be in [0, 1] with lr x weight_decay < 1 (each step scales the weights by 1 - lr x weight_decay)")
    }
    guard clip.isFinite, clip >= 0 else {
      throw MoEError.invalid("clip is \(clip); it must be finite and >= 0 (0 = no clipping)")
    }
    for (name, v) in [("aux_loss_coef", balanceCoef), ("z_loss_coef", zCoef)] {
      guard v.isFinite, v >= 0, v <= 1 else {
        throw MoEError.invalid("\(name) is \(v); it must be in [0, 1] (a larger auxiliary loss outweighs the language-model loss it regularizes)")
      }
    }
    guard beta1 >= 0, beta1 < 1, beta2 >= 0, beta2 < 1 else {
      throw MoEError.invalid("beta1 and beta2 must be in [0, 1) (got \(beta1), \(beta2))")
    }
    guard evalFraction >= 0, evalFraction < 1 else { throw MoEError.invalid("eval_fraction is \(evalFraction); use [0, 1)") }
  }
}

public struct StepStats: Sendable {
  public var step = 0
  /// Mean cross-entropy of the step's tokens.
  public var loss: Double = 0
  /// Mean balance figure and z-loss over MoE layers and sequences (0 for dense models).
  public var balance: Double = 0
  public var zLoss: Double = 0
  public var lr: Float = 0
  /// Global gradient norm before clipping.
  public var gradNorm: Double = 0
  public var tokens = 0
  public var seconds: Double = 0
  /// Busiest expert's share of tokens relative to an even share, worst MoE layer (0 for dense).
  public var maxExpertLoad: Double = 0
  /// The loss or gradient norm was not finite and `onNonFinite` is `.skip`:
  /// no weight or optimizer moment changed (loss and gradNorm show the values).
  public var skipped = false
  /// Bytes of activations and work buffers the step's passes held at most
  /// (the decoder's and the MoE layers'), weights, gradients and optimizer state excluded.
  public var activationBytes = 0
  /// Model FLOPs of the step: `ModelDescription.trainingFLOPsPerToken(seqLen:)` x tokens.
  public var modelFLOPs: Double = 0
}

public final class Trainer {
  public let model: DecoderModel
  public let options: TrainerOptions
  let trainTokens: [Int32]
  let heldOut: [Int32]
  public private(set) var step = 0
  /// True when every gradient buffer is zero (a step ended normally).
  var gradientsClean = false
  /// Gradients of the dense weights (nil when only MoE layers train).
  package let grads: DecoderGradients?
  /// Blocks below this one have nothing to train and run forward only.
  package let lowestLayer: Int
  package let parameterCount: Int
  package let moments: AlignedBuffer     // m then v, 2 * parameterCount

  public init(model: DecoderModel, tokens: [Int32], options: TrainerOptions) throws {
    try options.validate()
    guard model.matricesAreF32 else {
      throw MoEError.unsupported("training needs f32 weights; load the model with weight dtype f32")
    }
    guard options.seqLen <= model.contextLength else {
      throw MoEError.invalid("seq_len \(options.seqLen) exceeds the model's context \(model.contextLength)")
    }
    let lowest = options.trainOnly == .all ? 0 : model.layers.firstIndex { $0.moe != nil } ?? model.layers.count
    let passSequences = options.microBatch == 0 ? options.batch : options.microBatch
    let activations = model.trainingActivationBytes(sequences: passSequences, seqLen: options.seqLen,
                                                    recompute: options.recompute, lowestLayer: lowest)
    let memory = physicalMemoryBytes()
    guard memory == 0 || activations <= Double(memory) else {
      throw MoEError.invalid("a training pass of \(passSequences) x \(options.seqLen) tokens needs about \(Int(activations / Double(1 << 20))) MiB of activations, more than this machine's \(memory >> 20) MiB of memory; use a smaller micro_batch, recompute, or a shorter seq_len")
    }
    if let bad = tokens.first(where: { $0 < 0 || Int($0) >= model.vocabSize }) {
      throw MoEError.invalid("token id \(bad) is outside the vocabulary (0..<\(model.vocabSize))")
    }
    let held = heldOutCount(of: tokens.count, fraction: options.evalFraction)
    trainTokens = Array(tokens.prefix(tokens.count - held))
    heldOut = Array(tokens.suffix(held))
    guard trainTokens.count >= options.seqLen + 1 else {
      throw MoEError.invalid("the training data has \(trainTokens.count) tokens; a window needs seq_len + 1 = \(options.seqLen + 1)")
    }
    self.model = model
    self.options = options
    grads = options.trainOnly == .all ? try DecoderGradients(model: model) : nil
    lowestLayer = lowest
    model.trainScratch.release()
    var count = 0
    let visit = try Trainer.trainable(model, options.trainOnly, grads)
    try visit { _, _, _, n, _ in count += n }
    parameterCount = count
    moments = try AlignedBuffer(floats: 2 * count, what: "AdamW moments")
    model.runtime.zero(moments.pointer, floats: 2 * count)
  }

  public var trainTokenCount: Int { trainTokens.count }
  public var heldOutTokenCount: Int { heldOut.count }
  public var trainableParameters: Int { parameterCount }

  /// Which model tensor a trainable region belongs to (names it in errors).
  package enum Tensor {
    case embedding, lmHead, finalNorm
    case inputNorm(Int), postNorm(Int), qkv(Int), qkvBias(Int), output(Int), gateUp(Int), down(Int)
    case moe(layer: Int, LayerWeight, expert: Int)
  }

  /// Visits every trainable tensor region (tensor, weights, gradients, count,
  /// decayed) in a fixed order.
  package typealias Visitor = ((Tensor, UnsafeMutablePointer<Float>, UnsafePointer<Float>, Int, Bool) -> Void) throws -> Void
  package static func trainable(_ m: DecoderModel, _ only: TrainOnly, _ g: DecoderGradients?) throws -> Visitor {
    return { body in
      func dense(_ t: Tensor, _ w: DenseWeight, _ grad: AlignedBuffer, bias: (Tensor, AlignedBuffer)? = nil) {
        body(t, w.storage.pointer, grad.pointer, w.rows * w.cols, true)
        if let b = w.bias, let (bt, bias) = bias { body(bt, b.pointer, bias.pointer, w.rows, false) }
      }
      if only == .all, let g {
        dense(.embedding, m.embedding, g.embedding)
        if let lm = g.lmHead { dense(.lmHead, m.lmHead, lm) }
        body(.finalNorm, m.finalNorm.pointer, g.finalNorm.pointer, m.description.hiddenSize, false)
      }
      for (l, layer) in m.layers.enumerated() {
        if only == .all, let gl = g?.layers[l] {
          body(.inputNorm(l), layer.inputNorm.pointer, gl.inputNorm.pointer, m.description.hiddenSize, false)
          body(.postNorm(l), layer.postNorm.pointer, gl.postNorm.pointer, m.description.hiddenSize, false)
          dense(.qkv(l), layer.qkv, gl.qkv, bias: gl.qkvBias.map { (.qkvBias(l), $0) })
          dense(.output(l), layer.output, gl.output)
          if let gu = layer.gateUp, let ggu = gl.gateUp { dense(.gateUp(l), gu, ggu) }
          if let d = layer.down, let gd = gl.down { dense(.down(l), d, gd) }
        }
        if let moe = layer.moe {
          try moe.forEachParameterRow(routerOnly: only == .routers) { kind, e, w, gr, n in
            body(.moe(layer: l, kind, expert: e), w, gr, n, true)
          }
        }
      }
    }
  }

  /// The checkpoint name of a trainable tensor; `element` (an index into the
  /// region) picks q, k or v of the fused attention weight and gate or up of
  /// the fused dense FFN.
  package func name(of t: Tensor, element: Int) -> String {
    let d = model.description
    let q = d.numHeads * d.headDim, kv = d.numKVHeads * d.headDim
    func part(_ row: Int) -> TensorRole { row < q ? .query : row < q + kv ? .key : .value }
    let hf = d.hf
    switch t {
    case .embedding: return hf.name(.embedding)
    case .lmHead: return hf.name(.lmHead)
    case .finalNorm: return hf.name(.finalNorm)
    case .inputNorm(let l): return hf.name(.inputNorm, layer: l)
    case .postNorm(let l): return hf.name(.postNorm, layer: l)
    case .qkv(let l): return hf.name(part(element / max(1, d.hiddenSize)), layer: l)
    case .qkvBias(let l): return hf.name(part(element), layer: l, "bias")
    case .output(let l): return hf.name(.attentionOutput, layer: l)
    case .gateUp(let l): return hf.name(element / max(1, d.hiddenSize) < d.intermediateSize ? .ffnGate : .ffnUp, layer: l)
    case .down(let l): return hf.name(.ffnDown, layer: l)
    case .moe(let l, let kind, let e): return hf.name(kind, layer: l, expert: e)
    }
  }

  /// Learning rate at step s (0-based).
  public func learningRate(at s: Int) -> Float {
    let o = options
    if o.warmup > 0 && s < o.warmup { return o.lr * Float(s + 1) / Float(o.warmup) }
    if o.schedule == .constant { return o.lr }
    let span = max(1, o.steps - o.warmup)
    let progress = min(1, Double(s - o.warmup) / Double(span))
    return o.minLR + (o.lr - o.minLR) * Float(0.5 * (1 + cos(Double.pi * progress)))
  }

  /// Start of window b of step s: a function of (seed, s, b) only, so a
  /// resumed run reads the same windows.
  func windowStart(step s: Int, index b: Int) -> Int {
    var rng = Rng(seed: options.seed, stream: [0x7472_6169_6E, UInt64(s), UInt64(b)])
    return rng.below(trainTokens.count - options.seqLen)
  }

  /// One optimizer step over `batch` random windows.
  public func trainStep() throws -> StepStats {
    let started = monotonicSeconds()
    let o = options
    var stats = StepStats()
    stats.lr = learningRate(at: step)
    // The update clears the gradients it consumes; frozen ones are cleared here.
    let clean = gradientsClean
    gradientsClean = false
    if !clean { grads?.zero() }
    let moeLayers = model.layers.compactMap(\.moe)
    for moe in moeLayers where o.trainOnly == .routers || !clean { moe.zeroGradients() }
    let scale = 1 / Float(o.batch * o.seqLen)
    let passSize = o.microBatch == 0 ? o.batch : o.microBatch
    var lossSum: Double = 0
    var balance: Double = 0, z: Double = 0, worst: Double = 0
    var b = 0
    while b < o.batch {
      let n = min(passSize, o.batch - b)
      var windows: [Int32] = []
      windows.reserveCapacity(n * (o.seqLen + 1))
      for i in b..<(b + n) {
        let start = windowStart(step: step, index: i)
        windows += trainTokens[start..<(start + o.seqLen + 1)]
      }
      // Each pass's balance and z-loss count by its share of the batch.
      let share = Float(n) / Float(o.batch)
      for moe in moeLayers { try moe.setLossCoefficients(balance: o.balanceCoef * share, z: o.zCoef * share) }
      lossSum += try model.accumulateGradients(tokens: windows, sequences: n, lossScale: scale, grads: grads,
                                               expertGradients: o.trainOnly != .routers, compute: o.precision,
                                               recompute: o.recompute,
                                               lowestLayer: lowestLayer)
      for moe in moeLayers {
        balance += Double(moe.stats.losses.balance) * Double(share)
        z += Double(moe.stats.losses.z) * Double(share)
        let counts = moe.stats.tokensPerExpert, total = counts.reduce(0, +)
        if total > 0 { worst = max(worst, Double(counts.max() ?? 0) * Double(counts.count) / Double(total)) }
      }
      b += n
    }
    // The trainable regions, with their offsets into the moments.
    var regions: [Region] = []
    var total = 0
    try Trainer.trainable(model, o.trainOnly, grads)({ t, w, g, n, decay in
      regions.append(Region(tensor: t, weights: w, gradients: UnsafeMutablePointer(mutating: g), count: n, decay: decay,
                            offset: total))
      total += n
    })
    let norm = globalNorm(regions)
    stats.loss = lossSum / Double(o.batch * o.seqLen)
    stats.balance = moeLayers.isEmpty ? 0 : balance / Double(moeLayers.count)
    stats.zLoss = moeLayers.isEmpty ? 0 : z / Double(moeLayers.count)
    stats.activationBytes = model.trainingBuffersBytes
    stats.gradNorm = norm
    stats.tokens = o.batch * o.seqLen
    stats.modelFLOPs = model.trainingFLOPsPerToken(seqLen: o.seqLen) * Double(stats.tokens)
    stats.maxExpertLoad = worst
    // A NaN or infinity anywhere in the gradients makes the norm non-finite.
    // Nothing has changed yet: the gradients are left dirty for the next step to clear.
    if !lossSum.isFinite || !norm.isFinite {
      guard o.onNonFinite == .skip else {
        throw MoEError.nonFinite("step \(step + 1): \(nonFiniteProblem(loss: stats.loss, regions)); no weight or optimizer state was changed")
      }
      step += 1
      stats.step = step
      stats.skipped = true
      stats.seconds = monotonicSeconds() - started
      return stats
    }
    let clipScale: Float = o.clip > 0 && norm > Double(o.clip) ? Float(Double(o.clip) / norm) : 1
    step += 1
    adamW(regions, total: total, lr: stats.lr, clipScale: clipScale)
    gradientsClean = true
    stats.step = step
    stats.seconds = monotonicSeconds() - started
    return stats
  }

  /// What is not finite: the loss (and the weight behind it, if one is not
  /// finite), or the first tensor, in update order, whose gradient is not.
  func nonFiniteProblem(loss: Double, _ regions: [Region]) -> String {
    if !loss.isFinite { return "the loss is \(loss) (\(model.nonFiniteCause()))" }
    for r in regions {
      if let i = firstNonFinite(r.gradients, r.count) {
        return "the gradient of '\(name(of: r.tensor, element: i))' is \(r.gradients[i])"
      }
    }
    return "the gradient norm is not finite"
  }

  /// A trainable tensor region: weights, gradients, elements, decayed, offset into the moments.
  package struct Region: @unchecked Sendable {
    package var tensor: Tensor
    package var weights: UnsafeMutablePointer<Float>
    package var gradients: UnsafeMutablePointer<Float>
    package var count: Int
    var decay: Bool
    package var offset: Int
  }

  /// Splits regions into one contiguous run per worker, by element count.
  func forEachWorkerRun(_ regions: [Region], total: Int, _ body: (Int, ArraySlice<Region>) -> Void) {
    let W = model.runtime.workerCount
    var bounds = [Int](repeating: regions.count, count: W + 1)
    bounds[0] = 0
    var w = 1
    for (i, r) in regions.enumerated() where w < W {
      while w < W && r.offset >= total * w / W { bounds[w] = i; w += 1 }
    }
    model.runtime.pool.run { worker in
      let lo = bounds[worker], hi = max(lo, bounds[worker + 1])
      body(worker, regions[lo..<hi])
    }
  }

  /// sqrt of the sum of squared gradients (per-worker partial sums added in worker order).
  func globalNorm(_ regions: [Region]) -> Double {
    let total = regions.reduce(0) { $0 + $1.count }
    var partial = [Double](repeating: 0, count: model.runtime.workerCount)
    partial.withUnsafeMutableBufferPointer { sums in
      forEachWorkerRun(regions, total: total) { worker, run in
        var s: Double = 0
        for r in run { s += Double(dot(r.gradients, r.gradients, r.count)) }
        sums[worker] = s
      }
    }
    return partial.reduce(0, +).squareRoot()
  }

  /// AdamW on every region, clearing each gradient after use.
  func adamW(_ regions: [Region], total: Int, lr: Float, clipScale: Float) {
    let o = options
    let t = Float(step)
    let m = moments.pointer, v = moments.pointer + parameterCount
    let constants = moe_adamw_step(clip_scale: clipScale, beta1: o.beta1, beta2: o.beta2,
                                   c1: 1 / (1 - powf(o.beta1, t)), c2: 1 / (1 - powf(o.beta2, t)), lr: lr, eps: o.eps,
                                   keep: 1)
    let decayed = 1 - lr * o.weightDecay
    forEachWorkerRun(regions, total: total) { _, run in
      var k = constants
      for r in run {
        k.keep = r.decay ? decayed : 1
        moe_adamw_f32(r.weights, r.gradients, m + r.offset, v + r.offset, r.count, &k)
      }
    }
  }

  /// The update moe_adamw_f32 makes, one parameter at a time: the reference
  /// its tests compare against bit for bit.
  static func adamWReference(w: UnsafeMutablePointer<Float>, g: UnsafeMutablePointer<Float>,
                             m: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>, count: Int,
                             _ s: moe_adamw_step) {
    for i in 0..<count {
      let grad = g[i] * s.clip_scale
      let mi = (s.beta1 * m[i]).addingProduct(1 - s.beta1, grad)
      let vi = (s.beta2 * v[i]).addingProduct(1 - s.beta2, grad * grad)
      let update = (mi * s.c1) / ((vi * s.c2).squareRoot() + s.eps)
      m[i] = mi
      v[i] = vi
      w[i] = w[i] * s.keep - s.lr * update
      g[i] = 0
    }
  }

  /// Mean cross-entropy on held-out windows (at most evalWindows of seqLen).
  public func evaluateHeldOut() throws -> Double {
    guard heldOut.count >= 2 else { throw MoEError.invalid("no held-out data (eval_fraction is \(options.evalFraction))") }
    var eval = EvalOptions()
    eval.seqLen = min(options.seqLen + 1, heldOut.count, model.contextLength)
    eval.maxTokens = options.evalWindows * eval.seqLen
    return try model.evaluate(tokens: heldOut, options: eval).meanNLL
  }

  // MARK: - State

  /// trainer.json and optimizer.safetensors: the step, the options and the AdamW moments.
  public func stateFiles() -> [ExtraFile] {
    let o = options
    let json: JSON = .object([
      ("step", .int(step)), ("parameters", .int(parameterCount)), ("seed", .unsigned(o.seed)),
      ("seq_len", .int(o.seqLen)), ("batch", .int(o.batch)), ("steps", .int(o.steps)),
      ("lr", .float(Double(o.lr))), ("min_lr", .float(Double(o.minLR))), ("warmup", .int(o.warmup)),
      ("schedule", .string(o.schedule == .cosine ? "cosine" : "constant")),
      ("beta1", .float(Double(o.beta1))), ("beta2", .float(Double(o.beta2))), ("eps", .float(Double(o.eps))),
      ("weight_decay", .float(Double(o.weightDecay))), ("clip", .float(Double(o.clip))),
      ("aux_loss_coef", .float(Double(o.balanceCoef))), ("z_loss_coef", .float(Double(o.zCoef))),
      ("train_only", .int(Int(o.trainOnly.rawValue))), ("train_tokens", .int(trainTokens.count)),
      ("precision", .string(o.precision == .bf16 ? "bf16" : "f32")),
    ])
    let header = Safetensors.headerBytes(tensors: [("adam.m", .f32, [parameterCount]), ("adam.v", .f32, [parameterCount])],
                                         metadata: [("step", String(step))])
    // The moments go from their buffer to the file, never copied whole.
    let moments = self.moments, count = parameterCount
    return [ExtraFile("trainer.json", bytes: Array(json.serialized(indent: 1).utf8)),
            ExtraFile("optimizer.safetensors") { out in
              try out.write(header)
              try out.write(UnsafeRawBufferPointer(start: moments.pointer, count: 2 * count * 4))
            }]
  }

  /// Restores the step and moments saved by stateFiles() in `directory`. The
  /// model must have been loaded from the same directory and the options and
  /// data must match the saved run.
  public func restore(from directory: String) throws {
    let meta = try JSONParser.parse(try FileSystem.readAll(FileSystem.join(directory, "trainer.json")), what: "trainer.json")
    guard let savedStep = meta["step"]?.doubleValue, savedStep >= 0,
          let params = meta["parameters"]?.doubleValue else {
      throw MoEError.format("'\(directory)/trainer.json' lacks step or parameters")
    }
    guard Int(params) == parameterCount else {
      throw MoEError.invalid("the checkpoint's optimizer has \(Int(params)) parameters but this trainer has \(parameterCount) (a different train_only setting or model?)")
    }
    for (key, value) in [("seed", Double(options.seed)), ("seq_len", Double(options.seqLen)),
                         ("batch", Double(options.batch)), ("train_tokens", Double(trainTokens.count))] {
      guard meta[key]?.doubleValue == value else {
        throw MoEError.invalid("resume: \(key) was \(meta[key]?.doubleValue.map { String($0) } ?? "missing") but is now \(value); resume with the same data and settings")
      }
    }
    let source = try SafetensorsSource(file: FileSystem.join(directory, "optimizer.safetensors"))
    for (name, dst) in [("adam.m", moments.pointer), ("adam.v", moments.pointer + parameterCount)] {
      guard let info = source.info(name), info.shape == [parameterCount] else {
        throw MoEError.format("optimizer.safetensors: '\(name)' is missing or not [\(parameterCount)]")
      }
      try source.readFloat(name, into: dst)
    }
    if let bad = firstNonFinite(moments.pointer, 2 * parameterCount) {
      memset(moments.pointer, 0, 2 * parameterCount * 4)
      throw MoEError.nonFinite("optimizer.safetensors: '\(bad < parameterCount ? "adam.m" : "adam.v")' holds a NaN or infinite value (element \(bad % parameterCount)); the optimizer state cannot be resumed")
    }
    step = Int(savedStep)
  }
}

// MARK: - Names

extension TrainOnly: NamedCase {
  public var caseName: String {
    switch self {
    case .all: return "all"
    case .moe: return "moe"
    case .routers: return "routers"
    }
  }
}

extension LRSchedule: NamedCase {
  public var caseName: String {
    switch self {
    case .cosine: return "cosine"
    case .constant: return "constant"
    }
  }
}
