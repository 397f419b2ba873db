import Testing
import MoEKernelCode
@testable import MoESupport
@testable import MoEFormats
@testable import MoERuntime
@testable import MoEModel

#if canImport(Glibc)
import Glibc
#endif

/// The decoder block's primitives, backward beside forward: each backward
/// against a plain reference or finite differences, and the training pass
/// against inference (same loss), against itself (bits) and across
/// micro-batches, recompute and frozen weights.
@Suite(.serialized) struct DecoderBlockTests {
  typealias Tiny = DecoderGradientTests

  static func withModel<R>(_ arch: String, tied: Bool = true, bias: Bool = false, threads: Int = 2,
                           _ body: (DecoderModel) throws -> R) throws -> R {
    let dir = "/tmp/moecore-block-\(getpid())-\(arch)-\(UInt32.random(in: 0...UInt32.max))"
    defer { FileSystem.removeTree(dir) }
    try Tiny.writeModel(dir, arch: arch, tied: tied, bias: bias)
    var options = ModelLoadOptions()
    options.weightDType = .f32
    let model = try DecoderModel(path: dir, runtime: try Runtime(threads: threads, pin: false), options: options)
    for l in model.layers { try l.moe?.setLossCoefficients(balance: 0, z: 0) }
    return try body(model)
  }

  /// The dense products split their work over the workers by tokens where
  /// there are more tokens than output columns, else by columns (for the
  /// weight gradient: by the larger of its rows and columns). Either way each
  /// value equals the one-worker product's bit for bit and is near a plain sum.
  @Test(arguments: [(96, 48, 80), (40, 72, 56), (97, 33, 50)])
  func denseProductsSplitEitherWay(shape: (Int, Int, Int)) throws {
    let (T, rows, cols) = shape
    var rng = Rng(seed: 0x5B117)
    func values(_ n: Int) -> [Float] { (0..<n).map { _ in Float(2 * rng.uniform() - 1) } }
    let x = values(T * cols), dY = values(T * rows), w = values(rows * cols), bias = values(rows)
    func products(threads: Int) throws -> (out: [Float], dX: [Float], dW: [Float]) {
      let runtime = try Runtime(threads: threads, pin: false)
      let weight = try w.withUnsafeBufferPointer { wp in
        try bias.withUnsafeBufferPointer { bp in
          try DenseWeight(rows: rows, cols: cols, dtype: .f32, values: wp.baseAddress!, bias: bp.baseAddress!,
                          what: "test")
        }
      }
      let scratch = try (0..<threads).map { _ in try AlignedBuffer(floats: 64 * cols, what: "test") }
      var out = [Float](repeating: .nan, count: T * rows), dX = [Float](repeating: .nan, count: T * cols)
      var dW = [Float](repeating: 0.25, count: rows * cols)
      runtime.linear(x, tokens: T, weight, &out, scratch: scratch, scratchFloats: 64 * cols)
      runtime.inputGradient(dY: dY, w: weight, tokens: T, into: &dX, accumulate: false)
      runtime.weightGradient(dY: dY, x: x, tokens: T, rows: rows, cols: cols, into: &dW)
      return (out, dX, dW)
    }
    let one = try products(threads: 1), two = try products(threads: 2)
    #expect(one.out.map(\.bitPattern) == two.out.map(\.bitPattern))
    #expect(one.dX.map(\.bitPattern) == two.dX.map(\.bitPattern))
    #expect(one.dW.map(\.bitPattern) == two.dW.map(\.bitPattern))
    var worst: Double = 0
    for t in 0..<T {
      for r in 0..<rows {
        var sum = Double(bias[r])
        for c in 0..<cols { sum += Double(x[t * cols + c]) * Double(w[r * cols + c]) }
        worst = max(worst, abs(Double(two.out[t * rows + r]) - sum))
      }
      for c in 0..<cols {
        var sum: Double = 0
        for r in 0..<rows { sum += Double(dY[t * rows + r]) * Double(w[r * cols + c]) }
        worst = max(worst, abs(Double(two.dX[t * cols + c]) - sum))
      }
    }
    for r in 0..<rows {
      for c in 0..<cols {
        var sum = 0.25
        for t in 0..<T { sum += Double(dY[t * rows + r]) * Double(x[t * cols + c]) }
        worst = max(worst, abs(Double(two.dW[r * cols + c]) - sum))
      }
    }
    #expect(worst < 1e-4)
  }

  static func tokens(sequences: Int, length: Int, seed: UInt64) -> [Int32] {
    var rng = Rng(seed: seed)
    return (0..<(sequences * (length + 1))).map { _ in Int32(rng.below(Tiny.V)) }
  }

  static func maxRelativeError(_ a: [Float], _ b: [Float]) -> Float {
    let scale = max(b.map { abs($0) }.max() ?? 0, 1e-6)
    return zip(a, b).map { abs($0 - $1) }.max().map { $0 / scale } ?? 0
  }

  // MARK: - attention

  @Test(arguments: [(4, 2, 8, 37, 2), (6, 2, 40, 70, 1), (3, 3, 16, 5, 3), (4, 1, 64, 130, 1)])
  func attentionBackwardMatchesTheReference(nq: Int, nkv: Int, d: Int, T: Int, sequences: Int) throws {
    let runtime = try Runtime(threads: 2, pin: false)
    let scratch = ScratchSet()
    let width = (nq + 2 * nkv) * d, rows = sequences * T
    var rng = Rng(seed: UInt64(T * 31 + d))
    let qkv = (0..<(rows * width)).map { _ in Float(rng.normal()) }
    let dOut = (0..<(rows * nq * d)).map { _ in Float(rng.normal()) }
    var out = [Float](repeating: .nan, count: rows * nq * d), lse = [Float](repeating: .nan, count: rows * nq)
    var dqkv = [Float](repeating: 0, count: rows * width), expected = dqkv
    try qkv.withUnsafeBufferPointer { q in
      try out.withUnsafeMutableBufferPointer { o in try lse.withUnsafeMutableBufferPointer { l in
        try runtime.causalAttention(q: q.baseAddress!, ldq: width, keys: q.baseAddress! + nq * d,
                                    values: q.baseAddress! + (nq + nkv) * d, kvStride: width, out: o.baseAddress!,
                                    ldo: nq * d, tokens: T, start: 0, sequences: sequences, heads: nq, kvHeads: nkv,
                                    headDim: d, lse: l.baseAddress!, scratch: scratch)
      } }
      try out.withUnsafeBufferPointer { o in try lse.withUnsafeBufferPointer { l in
        try dOut.withUnsafeBufferPointer { g in try dqkv.withUnsafeMutableBufferPointer { dq in
          try runtime.causalAttentionBackward(qkv: q.baseAddress!, ld: width, out: o.baseAddress!, dOut: g.baseAddress!,
                                              lse: l.baseAddress!, dqkv: dq.baseAddress!, tokens: T, sequences: sequences,
                                              heads: nq, kvHeads: nkv, headDim: d, scratch: scratch)
        } }
      } }
      dOut.withUnsafeBufferPointer { g in expected.withUnsafeMutableBufferPointer { e in
        for s in 0..<sequences {
          ModelKernels.attentionBackwardReference(qkv: q.baseAddress! + s * T * width, ld: width, tokens: T, heads: nq,
                                                  kvHeads: nkv, d: d, dOut: g.baseAddress! + s * T * nq * d,
                                                  dqkv: e.baseAddress! + s * T * width)
        }
      } }
    }
    // The log-sum-exp rows, directly.
    let scale = 1 / Float(d).squareRoot(), group = nq / nkv
    for (s, t, h) in [(0, 0, 0), (sequences - 1, T - 1, nq - 1), (0, T / 2, nq / 2)] {
      let q = (s * T + t) * width + h * d
      var scores: [Double] = []
      for j in 0...t {
        let k = (s * T + j) * width + nq * d + h / group * d
        scores.append(Double((0..<d).reduce(Float(0)) { $0 + qkv[q + $1] * qkv[k + $1] } * scale))
      }
      let m = scores.max()!
      let direct = m + log(scores.reduce(0) { $0 + exp($1 - m) })
      #expect(abs(Double(lse[(s * nq + h) * T + t]) - direct) < 1e-4, "lse (\(s), \(t), \(h))")
    }
    let err = Self.maxRelativeError(dqkv, expected)
    #expect(err < 2e-5, "dqkv max error \(err) relative to the largest gradient")
  }

  // MARK: - RMSNorm, RoPE, cross-entropy

  @Test func rmsNormAndRopeBackwardMatchFiniteDifferences() throws {
    let H = 24, eps: Float = 1e-5
    var rng = Rng(seed: 3)
    var x = (0..<H).map { _ in Float(rng.normal()) }
    let w = (0..<H).map { _ in Float(1 + 0.2 * rng.normal()) }, dy = (0..<H).map { _ in Float(rng.normal()) }
    func loss(_ x: [Float]) -> Double {
      var y = [Float](repeating: 0, count: H)
      ModelKernels.rmsNorm(x, w, &y, H, eps: eps)
      return zip(y, dy).reduce(0) { $0 + Double($1.0 * $1.1) }
    }
    var dx = [Float](repeating: 0, count: H), inverse: Float = 0
    ModelKernels.rmsNormBackward(x, w, dy, &dx, H, eps: eps, inverse: &inverse)
    for i in [0, 5, H - 1] {
      let v = x[i]
      x[i] = v + 1e-2; let plus = loss(x)
      x[i] = v - 1e-2; let minus = loss(x)
      x[i] = v
      #expect(abs((plus - minus) / 2e-2 - Double(dx[i])) < 2e-3, "rmsNorm dx[\(i)]")
    }
    // RoPE is a rotation: its backward is its inverse, and <rope(a), b> = <a, ropeBackward(b)>.
    let d = 16, table = RotaryTable(headDim: d, base: 10000)
    table.ensure(8)
    let a = (0..<d).map { _ in Float(rng.normal()) }, b = (0..<d).map { _ in Float(rng.normal()) }
    var ra = a, rb = b
    table.withRow(7) { c, s in
      ModelKernels.rope(&ra, d, cos: c, sin: s)
      ModelKernels.ropeBackward(&rb, d, cos: c, sin: s)
    }
    let lhs = zip(ra, b).reduce(Float(0)) { $0 + $1.0 * $1.1 }, rhs = zip(a, rb).reduce(Float(0)) { $0 + $1.0 * $1.1 }
    #expect(abs(lhs - rhs) < 1e-4)
    table.withRow(7) { c, s in ModelKernels.ropeBackward(&ra, d, cos: c, sin: s) }
    #expect(Self.maxRelativeError(ra, a) < 1e-6)
  }

  @Test func crossEntropyGradientsMatchFiniteDifferences() throws {
    try Self.withModel("llama", tied: false) { m in
      let T = 5, H = Tiny.H, V = Tiny.V
      var rng = Rng(seed: 9)
      var hidden = (0..<(T * H)).map { _ in Float(rng.normal()) }
      let targets: [Int32] = [1, 39, 0, 7, 7]
      var losses = [Float](repeating: 0, count: T), dh = [Float](repeating: 0, count: T * H)
      var dW = [Float](repeating: 0, count: V * H)
      func total(_ h: [Float]) throws -> Double {
        var l = [Float](repeating: 0, count: T)
        try m.crossEntropy(hidden: h, rows: T, targets: targets, lossScale: 0, losses: &l, dHidden: nil,
                           headGradient: nil, buffers: ScratchSet())
        return l.reduce(0) { $0 + Double($1) }
      }
      try m.crossEntropy(hidden: hidden, rows: T, targets: targets, lossScale: 1, losses: &losses, dHidden: &dh,
                         headGradient: &dW, buffers: ScratchSet())
      #expect(abs(losses.reduce(0) { $0 + Double($1) } - (try total(hidden))) < 1e-5)
      for i in [0, 13, T * H - 1] {
        let v = hidden[i]
        hidden[i] = v + 1e-2; let plus = try total(hidden)
        hidden[i] = v - 1e-2; let minus = try total(hidden)
        hidden[i] = v
        #expect(abs((plus - minus) / 2e-2 - Double(dh[i])) < 2e-3, "d hidden[\(i)]")
      }
      let w = m.lmHead.storage.pointer
      for i in [3, V * H / 2, V * H - 1] {
        let v = w[i]
        w[i] = v + 1e-2; let plus = try total(hidden)
        w[i] = v - 1e-2; let minus = try total(hidden)
        w[i] = v
        #expect(abs((plus - minus) / 2e-2 - Double(dW[i])) < 2e-3, "d lm_head[\(i)]")
      }
    }
  }

  // MARK: - the training pass

  /// Every gradient buffer's values, dense and MoE (of `kinds`), in a fixed order.
  static func gradientValues(_ m: DecoderModel, _ g: DecoderGradients?,
                             kinds: [LayerWeight] = [.router, .gate, .up, .down]) throws -> [Float] {
    var out: [Float] = []
    if let g { for (b, n) in g.all { out += UnsafeBufferPointer(start: b.pointer, count: n) } }
    for l in m.layers {
      guard let moe = l.moe else { continue }
      for kind in kinds {
        let n = try moe.elementCount(of: kind, expert: -1)
        var v = [Float](repeating: 0, count: n)
        try moe.getGradient(kind, expert: -1, out: &v, count: n)
        out += v
      }
    }
    return out
  }

  static func zeroGradients(_ m: DecoderModel, _ g: DecoderGradients?) {
    g?.zero()
    for l in m.layers { l.moe?.zeroGradients() }
  }

  /// From cleared gradients, training passes over the sequences of `passes`
  /// (each of S + 1 tokens in `tokens`) without balance or z-loss terms: the
  /// summed loss and every gradient.
  static func trainingPasses(_ m: DecoderModel, _ grads: DecoderGradients, tokens: [Int32], length S: Int,
                             passes: [Range<Int>], compute: ComputePrecision = .f32,
                             recompute: Bool = false) throws -> (Double, [Float]) {
    zeroGradients(m, grads)
    var loss = 0.0
    for p in passes {
      for l in m.layers { try l.moe?.setLossCoefficients(balance: 0, z: 0) }
      loss += try m.accumulateGradients(tokens: Array(tokens[(p.lowerBound * (S + 1))..<(p.upperBound * (S + 1))]),
                                        sequences: p.count, lossScale: 1, grads: grads, compute: compute,
                                        recompute: recompute)
    }
    return (loss, try gradientValues(m, grads))
  }

  @Test(arguments: ["llama", "mixtral"])
  func trainingLossEqualsEvaluation(arch: String) throws {
    try Self.withModel(arch) { m in
      let S = 20, B = 3
      let tokens = Self.tokens(sequences: B, length: S, seed: 4)
      let grads = try DecoderGradients(model: m)
      let loss = try m.accumulateGradients(tokens: tokens, sequences: B, lossScale: 0, grads: grads)
      var nll = 0.0
      for s in 0..<B {
        var o = EvalOptions()
        o.seqLen = S + 1
        let window = Array(tokens[(s * (S + 1))..<((s + 1) * (S + 1))])
        nll += try m.evaluate(tokens: window, options: o).meanNLL * Double(S)
      }
      #expect(abs(loss - nll) <= 1e-5 * abs(nll), "training loss \(loss) vs evaluation \(nll)")
    }
  }

  /// Mixed precision: the weight products with bf16 operands give a loss and
  /// gradients near the f32 pass's (bf16 keeps 8 significant bits; the sums
  /// stay f32), but not the same, and the same bits on a rerun.
  @Test(arguments: ["llama", "mixtral"])
  func bf16ProductsStayNearTheF32Pass(arch: String) throws {
    try Self.withModel(arch) { m in
      let S = 16, B = 2
      let tokens = Self.tokens(sequences: B, length: S, seed: 9)
      let grads = try DecoderGradients(model: m)
      func run(_ compute: ComputePrecision) throws -> (Double, [Float]) {
        try Self.trainingPasses(m, grads, tokens: tokens, length: S, passes: [0..<B], compute: compute)
      }
      let (lossF32, gradF32) = try run(.f32)
      let (lossBF16, gradBF16) = try run(.bf16)
      let (lossAgain, gradAgain) = try run(.bf16)
      #expect(lossAgain.bitPattern == lossBF16.bitPattern && gradAgain == gradBF16)
      #expect(lossBF16 != lossF32 && gradBF16 != gradF32, "bf16 compute changed nothing")
      #expect(abs(lossBF16 - lossF32) <= 1e-2 * abs(lossF32), "loss \(lossBF16) vs \(lossF32)")
      // Norm-wise: each operand moves by at most 2^-8 of itself, a product by about 2^-7.
      var diff = 0.0, norm = 0.0
      for (a, b) in zip(gradBF16, gradF32) {
        diff += Double(a - b) * Double(a - b)
        norm += Double(b) * Double(b)
      }
      #expect(norm > 0 && (diff / norm).squareRoot() < 1.0 / 16, "relative gradient error \((diff / norm).squareRoot())")
    }
  }

  @Test(arguments: ["llama", "mixtral"])
  func passesAreDeterministicAndMicroBatchesAddUp(arch: String) throws {
    try Self.withModel(arch) { m in
      let S = 12, B = 4
      let tokens = Self.tokens(sequences: B, length: S, seed: 8)
      let grads = try DecoderGradients(model: m)
      func run(_ passes: [Range<Int>], recompute: Bool = false) throws -> (Double, [Float]) {
        try Self.trainingPasses(m, grads, tokens: tokens, length: S, passes: passes, recompute: recompute)
      }
      let whole = try run([0..<4]), again = try run([0..<4])
      #expect(whole.0.bitPattern == again.0.bitPattern && whole.1.map(\.bitPattern) == again.1.map(\.bitPattern))
      let recomputed = try run([0..<4], recompute: true)
      #expect(recomputed.0.bitPattern == whole.0.bitPattern && recomputed.1.map(\.bitPattern) == whole.1.map(\.bitPattern))
      // With recompute the MoE layers share one set of buffers; without, each has its own again.
      let moeScratch = { m.layers.compactMap { $0.moe?.scratch } }
      #expect(moeScratch().allSatisfy { $0 === m.sharedMoEScratch })
      let split = try run([0..<1, 1..<3, 3..<4])
      #expect(m.sharedMoEScratch.bytes() == 0)
      let own = moeScratch()
      #expect(own.allSatisfy { $0 !== m.sharedMoEScratch })
      #expect(Set(own.map(ObjectIdentifier.init)).count == own.count)
      #expect(abs(split.0 - whole.0) <= 1e-5 * abs(whole.0))
      #expect(Self.maxRelativeError(split.1, whole.1) < 1e-4)
      #expect(m.trainingActivationBytes(sequences: 4, seqLen: S, recompute: true)
              < m.trainingActivationBytes(sequences: 4, seqLen: S, recompute: false))
    }
  }

  @Test func frozenDenseWeightsGetNoGradientsAndTheMoEOnesAreUnchanged() throws {
    try Self.withModel("mixtral") { m in
      let S = 10, B = 2
      let tokens = Self.tokens(sequences: B, length: S, seed: 6)
      let grads = try DecoderGradients(model: m)
      _ = try m.accumulateGradients(tokens: tokens, sequences: B, lossScale: 1, grads: grads)
      let full = try Self.gradientValues(m, nil)
      Self.zeroGradients(m, grads)
      let lowest = m.layers.firstIndex { $0.moe != nil }!
      let loss = try m.accumulateGradients(tokens: tokens, sequences: B, lossScale: 1, grads: nil, lowestLayer: lowest)
      #expect(loss.isFinite)
      let moeOnly = try Self.gradientValues(m, nil)
      #expect(moeOnly.contains { $0 != 0 })
      #expect(Self.maxRelativeError(moeOnly, full) < 1e-5)
      // Frozen experts (routers only): the router gradients are the same, and
      // the experts' gradients are neither computed nor allocated.
      let fullRouters = try Self.gradientValues(m, nil, kinds: [.router])
      for l in m.layers { l.moe?.gradients = [:] }
      _ = try m.accumulateGradients(tokens: tokens, sequences: B, lossScale: 1, grads: nil, expertGradients: false,
                                    lowestLayer: lowest)
      for l in m.layers {
        guard let moe = l.moe else { continue }
        #expect(moe.gradients[.gate] == nil && moe.gradients[.up] == nil && moe.gradients[.down] == nil)
      }
      let routersOnly = try Self.gradientValues(m, nil, kinds: [.router])
      #expect(routersOnly.contains { $0 != 0 })
      #expect(Self.maxRelativeError(routersOnly, fullRouters) < 1e-5)
    }
  }
}
