// Continued pretraining: seeded random windows of a token stream, gradients
// accumulated over a batch of sequences, global-norm clipping, AdamW with
// decoupled weight decay, warmup + cosine (or constant) learning rate, and
// optimizer state that resumes exactly.

#if canImport(Glibc)
import Glibc
#endif

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
  /// What a step does with a non-finite loss or gradient norm.
  public var onNonFinite = NonFinitePolicy.error

  public init() {}

  func validate() throws {
    guard seqLen >= 1, batch >= 1, steps >= 1, warmup >= 0 else {
      throw MoEError.invalid("seq_len, batch and steps must be >= 1 and warmup >= 0 (got \(seqLen), \(batch), \(steps), \(warmup))")
    }
    for (name, v) in [("lr", lr), ("min_lr", minLR), ("eps", eps), ("weight_decay", weightDecay), ("clip", clip),
                      ("aux_loss_coef", balanceCoef), ("z_loss_coef", zCoef)] {
      guard v.isFinite, v >= 0 else { throw MoEError.invalid("\(name) is \(v); it must be finite and >= 0") }
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
  /// The step was skipped (non-finite loss or gradient with `.skip`).
  public var skipped = false
}

public final class Trainer {
  public let model: DecoderModel
  public let options: TrainerOptions
  let trainTokens: [Int32]
  let heldOut: [Int32]
  public private(set) var step = 0
  /// True when every gradient buffer is zero (a step ended normally).
  var gradientsClean = false
  let grads: DecoderGradients
  let parameterCount: Int
  let moments: AlignedBuffer     // m then v, 2 * parameterCount

  public init(model: DecoderModel, tokens: [Int32], options: TrainerOptions) throws {
    try options.validate()
    guard model.weightDType == .f32 else {
      throw MoEError.unsupported("training needs f32 weights; load the model with weight dtype f32")
    }
    guard options.seqLen <= model.contextLength else {
      throw MoEError.invalid("seq_len \(options.seqLen) exceeds the model's context \(model.contextLength)")
    }
    if let bad = tokens.first(where: { $0 < 0 || Int($0) >= model.vocabSize }) {
      throw MoEError.invalid("token id \(bad) is outside the vocabulary (0..<\(model.vocabSize))")
    }
    let held = Int(Double(tokens.count) * options.evalFraction)
    trainTokens = Array(tokens.prefix(tokens.count - held))
    heldOut = Array(tokens.suffix(held))
    guard trainTokens.count >= options.seqLen + 1 else {
      throw MoEError.invalid("the training data has \(trainTokens.count) tokens; a window needs seq_len + 1 = \(options.seqLen + 1)")
    }
    self.model = model
    self.options = options
    grads = try DecoderGradients(model: model)
    var count = 0
    let visit = try Trainer.trainable(model, options.trainOnly, grads)
    try visit { _, _, n, _ in count += n }
    parameterCount = count
    moments = try AlignedBuffer(floats: 2 * count, what: "AdamW moments")
    memset(moments.pointer, 0, 2 * count * 4)
  }

  public var trainTokenCount: Int { trainTokens.count }
  public var heldOutTokenCount: Int { heldOut.count }
  public var trainableParameters: Int { parameterCount }

  /// Visits every trainable tensor region (weights, gradients, count, decayed)
  /// in a fixed order.
  typealias Visitor = ((UnsafeMutablePointer<Float>, UnsafePointer<Float>, Int, Bool) -> Void) throws -> Void
  static func trainable(_ m: DecoderModel, _ only: TrainOnly, _ g: DecoderGradients) throws -> Visitor {
    return { body in
      func dense(_ w: DenseWeight, _ grad: AlignedBuffer, bias: AlignedBuffer? = nil) {
        body(w.storage.pointer, grad.pointer, w.rows * w.cols, true)
        if let b = w.bias, let bias { body(b.pointer, bias.pointer, w.rows, false) }
      }
      if only == .all {
        dense(m.embedding, g.embedding)
        if let lm = g.lmHead { dense(m.lmHead, lm) }
        body(m.finalNorm.pointer, g.finalNorm.pointer, m.description.hiddenSize, false)
      }
      for (l, layer) in m.layers.enumerated() {
        let gl = g.layers[l]
        if only == .all {
          body(layer.inputNorm.pointer, gl.inputNorm.pointer, m.description.hiddenSize, false)
          body(layer.postNorm.pointer, gl.postNorm.pointer, m.description.hiddenSize, false)
          dense(layer.qkv, gl.qkv, bias: gl.qkvBias)
          dense(layer.output, gl.output)
          if let gu = layer.gateUp, let ggu = gl.gateUp { dense(gu, ggu) }
          if let d = layer.down, let gd = gl.down { dense(d, gd) }
        }
        if let moe = layer.moe {
          try moe.forEachParameterRow(routerOnly: only == .routers) { w, gr, n in body(w, gr, n, true) }
        }
      }
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
    if o.trainOnly != .all || !clean { grads.zero() }
    let moeLayers = model.layers.compactMap(\.moe)
    for moe in moeLayers {
      if o.trainOnly == .routers || !clean { moe.zeroGradients() }
      // Backward adds the coefficients once per sequence: average over the batch.
      try moe.setLossCoefficients(balance: o.balanceCoef / Float(o.batch), z: o.zCoef / Float(o.batch))
    }
    let scale = 1 / Float(o.batch * o.seqLen)
    var lossSum: Double = 0
    var balance: Double = 0, z: Double = 0, worst: Double = 0
    for b in 0..<o.batch {
      let start = windowStart(step: step, index: b)
      let window = Array(trainTokens[start..<(start + o.seqLen + 1)])
      lossSum += try model.accumulateGradients(tokens: window, lossScale: scale, grads: grads)
      for moe in moeLayers {
        balance += Double(moe.stats.losses.balance)
        z += Double(moe.stats.losses.z)
        let counts = moe.stats.tokensPerExpert, total = counts.reduce(0, +)
        if total > 0 { worst = max(worst, Double(counts.max() ?? 0) * Double(counts.count) / Double(total)) }
      }
    }
    // The trainable regions, with their offsets into the moments.
    var regions: [Region] = []
    var total = 0
    try Trainer.trainable(model, o.trainOnly, grads)({ w, g, n, decay in
      regions.append(Region(weights: w, gradients: UnsafeMutablePointer(mutating: g), count: n, decay: decay, offset: total))
      total += n
    })
    let norm = globalNorm(regions)
    let clipScale: Float = o.clip > 0 && norm > Double(o.clip) ? Float(Double(o.clip) / norm) : 1
    step += 1
    adamW(regions, total: total, lr: stats.lr, clipScale: clipScale)
    gradientsClean = true
    let sequences = Double(o.batch * max(moeLayers.count, 1))
    stats.step = step
    stats.loss = lossSum / Double(o.batch * o.seqLen)
    stats.balance = moeLayers.isEmpty ? 0 : balance / sequences
    stats.zLoss = moeLayers.isEmpty ? 0 : z / sequences
    stats.gradNorm = norm
    stats.tokens = o.batch * o.seqLen
    stats.seconds = monotonicSeconds() - started
    stats.maxExpertLoad = worst
    return stats
  }

  /// A trainable tensor region: weights, gradients, elements, decayed, offset into the moments.
  struct Region: @unchecked Sendable {
    var weights: UnsafeMutablePointer<Float>
    var gradients: UnsafeMutablePointer<Float>
    var count: Int
    var decay: Bool
    var offset: Int
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

  /// AdamW on every region (SIMD), clearing each gradient after use.
  func adamW(_ regions: [Region], total: Int, lr: Float, clipScale: Float) {
    let o = options
    let t = Float(step)
    let c1 = 1 / (1 - powf(o.beta1, t)), c2 = 1 / (1 - powf(o.beta2, t))
    let m = moments.pointer, v = moments.pointer + parameterCount
    let b1 = Vec16(repeating: o.beta1), b2 = Vec16(repeating: o.beta2)
    let ob1 = Vec16(repeating: 1 - o.beta1), ob2 = Vec16(repeating: 1 - o.beta2)
    let scale = Vec16(repeating: clipScale), lrv = Vec16(repeating: lr), epsv = Vec16(repeating: o.eps)
    let c1v = Vec16(repeating: c1), c2v = Vec16(repeating: c2)
    forEachWorkerRun(regions, total: total) { _, run in
      for r in run {
        let w = r.weights, g = r.gradients, mm = m + r.offset, vv = v + r.offset
        let keep = Vec16(repeating: r.decay ? 1 - lr * o.weightDecay : 1)
        var i = 0
        while i + 16 <= r.count {
          let grad = load16(g + i) * scale
          let mi = (b1 * load16(mm + i)).addingProduct(ob1, grad)
          let vi = (b2 * load16(vv + i)).addingProduct(ob2, grad * grad)
          let update = (mi * c1v) / ((vi * c2v).squareRoot() + epsv)
          store16(mi, mm + i)
          store16(vi, vv + i)
          store16((load16(w + i) * keep) - lrv * update, w + i)
          store16(Vec16(), g + i)
          i += 16
        }
        let keepScalar = r.decay ? 1 - lr * o.weightDecay : 1
        while i < r.count {
          let grad = g[i] * clipScale
          mm[i] = o.beta1 * mm[i] + (1 - o.beta1) * grad
          vv[i] = o.beta2 * vv[i] + (1 - o.beta2) * grad * grad
          let update = (mm[i] * c1) / ((vv[i] * c2).squareRoot() + o.eps)
          w[i] = w[i] * keepScalar - lr * update
          g[i] = 0
          i += 1
        }
      }
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
  public func stateFiles() -> [(String, [UInt8])] {
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
    ])
    var optimizer = Safetensors.headerBytes(tensors: [("adam.m", .f32, [parameterCount]), ("adam.v", .f32, [parameterCount])],
                                            metadata: [("step", String(step))])
    optimizer += UnsafeRawBufferPointer(start: moments.pointer, count: 2 * parameterCount * 4)
    return [("trainer.json", Array(json.serialized(indent: 1).utf8)), ("optimizer.safetensors", optimizer)]
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
      throw MoEError.invalid("the checkpoint's optimizer has \(Int(params)) parameters but this trainer has \(parameterCount) (different --train-only or model?)")
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
    step = Int(savedStep)
  }
}
