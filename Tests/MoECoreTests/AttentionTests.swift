import Testing
@testable import MoESupport
@testable import MoERuntime
@testable import MoEModel

#if canImport(Glibc)
import Glibc
#endif

/// The blocked causal attention (ModelKernels.attendBlock and the runtime's
/// causalAttention) against attendOne, one query head and token at a time.
@Suite struct AttentionKernelTests {
  /// Random queries [T, nq * d] and a cache [start + T, nkv * d] of keys and values.
  struct Problem {
    let nq: Int, nkv: Int, d: Int, start: Int, T: Int
    var q: [Float], keys: [Float], values: [Float]

    init(nq: Int, nkv: Int, d: Int, start: Int, T: Int, seed: UInt64, queryScale: Double = 1) {
      self.nq = nq; self.nkv = nkv; self.d = d; self.start = start; self.T = T
      var rng = Rng(seed: seed)
      q = (0..<(T * nq * d)).map { _ in Float(rng.normal() * queryScale) }
      keys = (0..<((start + T) * nkv * d)).map { _ in Float(rng.normal()) }
      values = (0..<((start + T) * nkv * d)).map { _ in Float(rng.normal()) }
    }

    var group: Int { nq / nkv }
    var scale: Float { 1 / Float(d).squareRoot() }

    /// attendOne for every (token, head): out [T, nq * d].
    func reference() -> [Float] {
      var out = [Float](repeating: .nan, count: T * nq * d)
      var scores = [Float](repeating: 0, count: start + T)
      q.withUnsafeBufferPointer { qp in keys.withUnsafeBufferPointer { kp in values.withUnsafeBufferPointer { vp in
        out.withUnsafeMutableBufferPointer { op in scores.withUnsafeMutableBufferPointer { sp in
          for t in 0..<T {
            for h in 0..<nq {
              let g = h / group
              ModelKernels.attendOne(q: qp.baseAddress! + (t * nq + h) * d, keys: kp.baseAddress! + g * d,
                                     values: vp.baseAddress! + g * d, stride: nkv * d, last: start + t, d: d,
                                     scale: scale, scores: sp.baseAddress!, out: op.baseAddress! + (t * nq + h) * d)
            }
          }
        } }
      } } }
      return out
    }

    /// attendBlock over query blocks of `block` tokens, kv head by kv head.
    func blocked(block: Int) throws -> [Float] {
      var out = [Float](repeating: .nan, count: T * nq * d)
      let scratch = try AlignedBuffer(floats: ModelKernels.attendBlockScratchFloats(
        count: block, group: group, first: start + T - min(block, T), d: d), what: "test scratch")
      q.withUnsafeBufferPointer { qp in keys.withUnsafeBufferPointer { kp in values.withUnsafeBufferPointer { vp in
        out.withUnsafeMutableBufferPointer { op in
          var t0 = 0
          while t0 < T {
            let count = min(block, T - t0)
            for g in 0..<nkv {
              ModelKernels.attendBlock(q: qp.baseAddress! + t0 * nq * d + g * group * d, ldq: nq * d, group: group,
                                       count: count, first: start + t0, keys: kp.baseAddress! + g * d,
                                       values: vp.baseAddress! + g * d, stride: nkv * d, d: d, scale: scale,
                                       out: op.baseAddress! + t0 * nq * d + g * group * d, ldo: nq * d,
                                       scratch: scratch.pointer)
            }
            t0 += count
          }
        }
      } } }
      return out
    }

    /// The runtime's causalAttention with `threads` workers.
    func runtime(threads: Int) throws -> [Float] {
      let runtime = try Runtime(threads: threads, pin: false)
      let scratch = ScratchSet()
      var out = [Float](repeating: .nan, count: T * nq * d)
      try q.withUnsafeBufferPointer { qp in try keys.withUnsafeBufferPointer { kp in
        try values.withUnsafeBufferPointer { vp in try out.withUnsafeMutableBufferPointer { op in
          try runtime.causalAttention(q: qp.baseAddress!, ldq: nq * d, keys: kp.baseAddress!, values: vp.baseAddress!,
                                      kvStride: nkv * d, out: op.baseAddress!, ldo: nq * d, tokens: T, start: start, heads: nq,
                                      kvHeads: nkv, headDim: d, scratch: scratch)
        } }
      } }
      return out
    }
  }

  /// Largest |got - want| / max(1, |want|); also fails on a NaN in either.
  static func worstError(_ got: [Float], _ want: [Float]) -> Float {
    var worst: Float = 0
    for (a, b) in zip(got, want) {
      guard a.isFinite, b.isFinite else { return .infinity }
      worst = max(worst, abs(a - b) / max(1, abs(b)))
    }
    return worst
  }

  /// The outputs are convex combinations of N(0, 1) values; the kernels differ
  /// only in summation order and exp16 against expf (relative error < 3e-7),
  /// so they agree to 1e-5 relative (1e-5 absolute below magnitude 1).
  static let tolerance: Float = 1e-5

  // (query heads, kv heads, head dim, cached positions, new tokens, block tokens)
  @Test(arguments: [
    (1, 1, 64, 0, 1, 64), (3, 1, 64, 0, 1, 64), (2, 2, 64, 37, 1, 64),   // one token, fresh and after a cache
    (3, 1, 40, 0, 5, 64), (6, 2, 72, 11, 15, 16), (2, 1, 64, 0, 16, 16),
    (4, 4, 64, 0, 65, 64), (3, 1, 64, 0, 130, 64), (3, 1, 40, 37, 130, 32),
    (6, 2, 72, 0, 100, 64), (2, 2, 40, 5, 300, 64), (3, 1, 72, 200, 70, 16),
  ])
  func attendBlockMatchesAttendOne(shape: (Int, Int, Int, Int, Int, Int)) throws {
    let (nq, nkv, d, start, T, block) = shape
    let p = Problem(nq: nq, nkv: nkv, d: d, start: start, T: T, seed: UInt64(nq * 1000 + d * 10 + T))
    let worst = Self.worstError(try p.blocked(block: block), p.reference())
    #expect(worst <= Self.tolerance, "nq=\(nq) nkv=\(nkv) d=\(d) start=\(start) T=\(T) block=\(block): \(worst)")
  }

  /// The decode kernel (one token, all heads, spans of positions merged)
  /// against attendOne per head, at the last position of the problem.
  @Test(arguments: [(1, 1, 64, 0), (3, 1, 64, 0), (3, 1, 64, 15), (3, 1, 64, 16), (2, 2, 40, 37),
                    (6, 2, 72, 300), (9, 3, 64, 100), (5, 1, 8, 1000)])
  func attendSpansMatchAttendOne(shape: (Int, Int, Int, Int)) throws {
    let (nq, nkv, d, start) = shape
    var p = Problem(nq: nq, nkv: nkv, d: d, start: start, T: 1, seed: UInt64(nq * 77 + d + start))
    let want = p.reference()
    let n = start + 1, stride = ModelKernels.attendSpanScoreStride(positions: n)
    #expect(stride % 16 == 0 && stride >= n)
    let scores = try AlignedBuffer(floats: nq * stride, what: "test scores")
    let partialStride = ModelKernels.spanPartialFloats(heads: nq, d: d)
    func run(_ p: Problem, spans: Int) -> [Float] {
      var got = [Float](repeating: .nan, count: nq * d)
      var partial = [Float](repeating: .nan, count: spans * partialStride)
      p.q.withUnsafeBufferPointer { qp in p.keys.withUnsafeBufferPointer { kp in p.values.withUnsafeBufferPointer { vp in
        partial.withUnsafeMutableBufferPointer { pp in
          for w in 0..<spans {
            let r = pp.baseAddress! + w * partialStride
            ModelKernels.attendSpan(q: qp.baseAddress!, heads: nq, kvHeads: nkv, d: d, keys: kp.baseAddress!,
                                    values: vp.baseAddress!, stride: nkv * d, first: n * w / spans,
                                    end: n * (w + 1) / spans, scale: p.scale, scores: scores.pointer,
                                    out: r, maxima: r + nq * d, sums: r + nq * d + nq)
          }
          got.withUnsafeMutableBufferPointer { op in
            ModelKernels.mergeSpans(pp.baseAddress!, partialStride: partialStride, spans: spans, heads: nq, d: d,
                                    out: op.baseAddress!)
          }
        }
      } } }
      return got
    }
    // More spans than positions leaves some empty: they must not count.
    for spans in [1, 2, 3] {
      let worst = Self.worstError(run(p, spans: spans), want)
      #expect(worst <= Self.tolerance, "\(shape) spans=\(spans): \(worst)")
    }
    // A NaN key poisons every head of its kv head, and only those.
    p.keys[start * nkv * d + (nkv - 1) * d] = .nan
    for spans in [1, 2] {
      let got = run(p, spans: spans)
      for h in 0..<nq {
        let poisoned = h / p.group == nkv - 1
        #expect((0..<d).allSatisfy { got[h * d + $0].isNaN == poisoned }, "\(shape) spans=\(spans) head \(h)")
      }
    }
  }

  /// Scores far beyond exp's range (|s| in the hundreds): the row maximum keeps
  /// the softmax finite. The scores' own rounding (about 1e-7 of their size)
  /// moves the weights, so the bound grows with them: 1e-5 times the largest score.
  @Test func largeScoresStayFinite() throws {
    let p = Problem(nq: 3, nkv: 1, d: 64, start: 10, T: 90, seed: 5, queryScale: 60)
    let want = p.reference()
    var largest: Float = 0
    for t in 0..<p.T { for h in 0..<p.nq {
      for j in 0...(p.start + t) {
        var s: Float = 0
        for c in 0..<p.d { s += p.q[(t * p.nq + h) * p.d + c] * p.keys[j * p.d + c] }
        largest = max(largest, abs(s * p.scale))
      }
    } }
    #expect(largest > 200)
    let worst = Self.worstError(try p.blocked(block: 32), want)
    #expect(worst <= Self.tolerance * largest, "worst \(worst), largest score \(largest)")
  }

  /// The runtime's split over workers and query blocks: the same as attendOne
  /// within the bound, and the same bits on every run with a given thread count.
  @Test(arguments: [(3, 1, 64, 0, 300), (9, 3, 64, 0, 200), (4, 2, 40, 50, 100), (2, 1, 72, 3, 17), (4, 2, 64, 20, 3),
                    (9, 3, 64, 900, 1), (4, 2, 40, 600, 5)])
  func runtimeAttentionMatchesAndRepeats(shape: (Int, Int, Int, Int, Int)) throws {
    let (nq, nkv, d, start, T) = shape
    let p = Problem(nq: nq, nkv: nkv, d: d, start: start, T: T, seed: UInt64(7 + T))
    let want = p.reference()
    for threads in [1, 2, 3] {
      let first = try p.runtime(threads: threads)
      let worst = Self.worstError(first, want)
      #expect(worst <= Self.tolerance, "\(shape) threads=\(threads): \(worst)")
      let again = try p.runtime(threads: threads)
      #expect(zip(first, again).allSatisfy { $0.bitPattern == $1.bitPattern }, "\(shape) threads=\(threads) differs on a rerun")
    }
  }

  /// A NaN key at position p poisons exactly the rows that see p, as with attendOne.
  @Test func nonFiniteKeyReachesOnlyLaterRows() throws {
    var p = Problem(nq: 3, nkv: 1, d: 40, start: 8, T: 60, seed: 3)
    let poisoned = 8 + 25
    p.keys[poisoned * p.d + 7] = .nan
    let want = p.reference(), got = try p.blocked(block: 64)
    for t in 0..<p.T {
      for h in 0..<p.nq {
        let row = (t * p.nq + h) * p.d
        let wantNaN = (0..<p.d).map { want[row + $0].isNaN }, gotNaN = (0..<p.d).map { got[row + $0].isNaN }
        #expect(wantNaN == [Bool](repeating: p.start + t >= poisoned, count: p.d), "reference, token \(t)")
        #expect(gotNaN == wantNaN, "token \(t) head \(h)")
      }
    }
  }

  /// A bf16 KV cache (keys and values rounded to nearest even): decode, by
  /// attendSpan and through the runtime's spans on 1-3 workers, reads each
  /// position as its f32 value; the blocked kernel refuses bf16 rows.
  @Test(arguments: [(3, 1, 64, 0, 1), (9, 3, 64, 700, 1), (4, 2, 40, 37, 1), (4, 2, 64, 300, 5), (6, 2, 72, 20, 15)])
  func bf16CacheReadsAsItsValues(shape: (Int, Int, Int, Int, Int)) throws {
    let (nq, nkv, d, start, T) = shape
    var p = Problem(nq: nq, nkv: nkv, d: d, start: start, T: T, seed: UInt64(31 * nq + start))
    let keys16 = p.keys.map(floatToBF16), values16 = p.values.map(floatToBF16)
    p.keys = keys16.map(bf16ToFloat)
    p.values = values16.map(bf16ToFloat)
    let want = p.reference()
    let scratch = ScratchSet()
    for threads in [1, 2, 3] {
      let runtime = try Runtime(threads: threads, pin: false)
      var got = [Float](repeating: .nan, count: T * nq * d)
      try p.q.withUnsafeBufferPointer { qp in try keys16.withUnsafeBufferPointer { kp in
        try values16.withUnsafeBufferPointer { vp in try got.withUnsafeMutableBufferPointer { op in
          try runtime.causalAttention(q: qp.baseAddress!, ldq: nq * d, keys: kp.baseAddress!, values: vp.baseAddress!,
                                      kvType: .bf16, kvStride: nkv * d, out: op.baseAddress!, ldo: nq * d, tokens: T,
                                      start: start, heads: nq, kvHeads: nkv, headDim: d, scratch: scratch)
        } }
      } }
      let worst = Self.worstError(got, want)
      #expect(worst <= Self.tolerance, "\(shape) threads=\(threads): \(worst)")
    }
    // 16 query tokens take the blocked kernel, which reads f32 only.
    let long = Problem(nq: nq, nkv: nkv, d: d, start: 0, T: 16, seed: 2)
    let k16 = long.keys.map(floatToBF16)
    var out = [Float](repeating: 0, count: 16 * nq * d)
    do {
      try long.q.withUnsafeBufferPointer { qp in try k16.withUnsafeBufferPointer { kp in
        try out.withUnsafeMutableBufferPointer { op in
          try Runtime(threads: 1, pin: false).causalAttention(
            q: qp.baseAddress!, ldq: nq * d, keys: kp.baseAddress!, values: kp.baseAddress!, kvType: .bf16,
            kvStride: nkv * d, out: op.baseAddress!, ldo: nq * d, tokens: 16, start: 0, heads: nq, kvHeads: nkv,
            headDim: d, scratch: scratch)
        }
      } }
      Issue.record("bf16 keys were accepted by the blocked kernel")
    } catch let e as MoEError {
      #expect(e.kind == .invalidArgument && e.message.contains("decode only"), "\(e.message)")
    }
  }

  @Test func headsThatDoNotGroupAreAnError() throws {
    let p = Problem(nq: 3, nkv: 2, d: 8, start: 0, T: 20, seed: 1)
    do {
      _ = try p.runtime(threads: 1)
      Issue.record("3 query heads over 2 KV heads were accepted")
    } catch let e as MoEError {
      #expect(e.kind == .invalidArgument && e.message.contains("3 query heads over 2 KV heads"), "\(e.message)")
    }
  }

  @Test func blockTokensAndCostSplit() {
    // 64 for long prompts on few workers; smaller to give every worker work or to bound the scores.
    #expect(Runtime.attentionBlockTokens(tokens: 512, keys: 512, group: 3, kvHeads: 3, workers: 2) == 64)
    #expect(Runtime.attentionBlockTokens(tokens: 512, keys: 512, group: 3, kvHeads: 3, workers: 16) == 32)
    #expect(Runtime.attentionBlockTokens(tokens: 512, keys: 4096, group: 3, kvHeads: 3, workers: 2) == 16)
    #expect(Runtime.attentionBlockTokens(tokens: 20, keys: 20, group: 1, kvHeads: 8, workers: 2) == 20)
    // Contiguous runs of about equal cost that cover every item once.
    #expect(Runtime.splitByCost([1, 2, 3, 4], parts: 2) == [0, 3, 4])
    #expect(Runtime.splitByCost([5, 5, 5, 5], parts: 2) == [0, 2, 4])
    #expect(Runtime.splitByCost([1, 1], parts: 4) == [0, 1, 1, 2, 2])
    #expect(Runtime.splitByCost([], parts: 3) == [0, 0, 0, 0])
  }
}

/// The decoder's forward over a prompt equals the same tokens fed in chunks
/// (the blocked kernel with a filled cache) and one at a time (attendOne).
@Suite(.serialized) struct DecoderAttentionTests {
  @Test func prefillEqualsChunksAndSingleTokens() throws {
    let dir = "/tmp/moecore-attn-\(getpid())"
    FileSystem.removeTree(dir)
    defer { FileSystem.removeTree(dir) }
    try DecoderGradientTests.writeModel(dir, arch: "llama", tied: false, bias: false)
    var options = ModelLoadOptions()
    options.weightDType = .f32
    let model = try DecoderModel(path: dir, runtime: try Runtime(threads: 2, pin: false), options: options)
    let H = model.description.hiddenSize
    var rng = Rng(seed: 21)
    let tokens = (0..<60).map { _ in Int32(rng.below(model.vocabSize)) }
    func run(_ chunks: [Int]) throws -> [Float] {
      var hidden: [Float] = [], start = 0
      for n in chunks {
        let h = try Array(tokens[start..<(start + n)]).withUnsafeBufferPointer { try model.forwardHidden($0, start: start) }
        hidden += Array(UnsafeBufferPointer(start: h, count: n * H))
        start += n
      }
      return hidden
    }
    let whole = try run([60])
    let chunks = try run([20, 17, 23])
    let single = try run([Int](repeating: 1, count: 60))
    #expect(AttentionKernelTests.worstError(chunks, whole) <= 1e-5)
    #expect(AttentionKernelTests.worstError(single, whole) <= 1e-5)
  }
}
