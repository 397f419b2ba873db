// Decoder kernels: RMSNorm, rotary embeddings, causal attention over a KV
// cache, and a row-parallel linear layer. Each has a plain reference in the
// tests (tests/python and ModelKernelTests).

import MoESupport
import MoERuntime
import MoELayer
#if canImport(Glibc)
import Glibc
#endif
import CMoECPU
import MoEKernelCode

package enum ModelKernels {
  /// out[H] = x[H] / sqrt(mean(x^2) + eps) * weight[H]  (HF: statistics in f32).
  package static func rmsNorm(_ x: UnsafePointer<Float>, _ weight: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>,
                              _ n: Int, eps: Float) {
    let meanSquare = dot(x, x, n) / Float(n)
    let scale = 1 / (meanSquare + eps).squareRoot()
    for i in 0..<n { out[i] = x[i] * scale * weight[i] }
  }

  /// Rotates one head vector v[d] in place for position `pos` (HF rotate_half
  /// layout: pairs (i, i + d/2)); cos/sin: [d/2] for that position.
  @inlinable @inline(always)
  package static func rope(_ v: UnsafeMutablePointer<Float>, _ d: Int, cos: UnsafePointer<Float>, sin: UnsafePointer<Float>) {
    let half = d / 2
    for i in 0..<half {
      let a = v[i], b = v[i + half]
      v[i] = a * cos[i] - b * sin[i]
      v[i + half] = b * cos[i] + a * sin[i]
    }
  }

  /// Causal attention of one query head over positions 0...last of a cache.
  /// q: [d]; keys/values: row j at base + j * stride (the head's slice);
  /// scores: scratch [last + 1]; out: [d].
  package static func attendOne(q: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
                                stride: Int, last: Int, d: Int, scale: Float,
                                scores: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>) {
    var maxScore = -Float.infinity
    for j in 0...last {
      let s = dot(q, keys + j * stride, d) * scale
      scores[j] = s
      if s > maxScore { maxScore = s }
    }
    var sum: Float = 0
    for j in 0...last {
      let e = expf(scores[j] - maxScore)
      scores[j] = e
      sum += e
    }
    let inv = 1 / sum
    out.update(repeating: 0, count: d)
    for j in 0...last { axpy(scores[j] * inv, values + j * stride, out, d) }
  }

  /// Decode attention of one token over a span of cached positions, all heads
  /// at once: query head h is q + h * d (kv head h / (heads / kvHeads));
  /// position p's keys and values are the rows keys/values + p * stride
  /// elements (f32, or bf16 when `kvType` is .bf16: a reduced-precision KV
  /// cache), which hold every kv head (a KV cache row), so the span is read as
  /// one contiguous stream. For positions first ..< end this writes, per head
  /// h, the span's scaled maximum score maxima[h], the sum of exp(scale *
  /// score - maxima[h]) into sums[h], and the unnormalized sum of those
  /// weights times the values into out + h * d. mergeSpans combines spans into
  /// the softmax output. A non-finite score makes maxima[h] NaN (which poisons
  /// the merged output). scores: scratch of heads * attendSpanScoreStride(positions:) floats.
  package static func attendSpan(q: UnsafePointer<Float>, heads nq: Int, kvHeads nkv: Int, d: Int,
                                 keys: UnsafeRawPointer, values: UnsafeRawPointer, kvType: DType = .f32, stride: Int,
                                 first: Int, end: Int, scale: Float, scores: UnsafeMutablePointer<Float>,
                                 out: UnsafeMutablePointer<Float>, maxima: UnsafeMutablePointer<Float>,
                                 sums: UnsafeMutablePointer<Float>) {
    if kvType == .bf16 {
      attendSpan(BF16Rows.self, q: q, heads: nq, kvHeads: nkv, d: d, keys: keys, values: values, stride: stride,
                 first: first, end: end, scale: scale, scores: scores, out: out, maxima: maxima, sums: sums)
    } else {
      attendSpan(F32Rows.self, q: q, heads: nq, kvHeads: nkv, d: d, keys: keys, values: values, stride: stride,
                 first: first, end: end, scale: scale, scores: scores, out: out, maxima: maxima, sums: sums)
    }
  }

  @inlinable @inline(always)
  package static func attendSpan<L: RowLoader>(_: L.Type, q: UnsafePointer<Float>, heads nq: Int, kvHeads nkv: Int, d: Int,
                                               keys: UnsafeRawPointer, values: UnsafeRawPointer, stride: Int,
                                               first: Int, end: Int, scale: Float, scores: UnsafeMutablePointer<Float>,
                                               out: UnsafeMutablePointer<Float>, maxima: UnsafeMutablePointer<Float>,
                                               sums: UnsafeMutablePointer<Float>) {
    let n = end - first, ldS = attendSpanScoreStride(positions: n), group = nq / nkv
    guard n > 0 else {
      for h in 0..<nq { maxima[h] = -.infinity; sums[h] = 0 }
      out.update(repeating: 0, count: nq * d)
      return
    }
    if d % 16 != 0 {
      for i in 0..<n {
        for h in 0..<nq {
          let k = (first + i) * stride + h / group * d, qh = q + h * d
          var s: Float = 0
          for c in 0..<d { s += qh[c] * L.load(keys, k + c) }
          scores[h * ldS + i] = s
        }
      }
    } else {
      // Position by position (a cache row holds every kv head: one contiguous
      // read), up to 4 query heads of one kv head at a time.
      for i in 0..<n {
        let row = (first + i) * stride
        for g in 0..<nkv {
          let k = row + g * d
          var h0 = g * group
          while h0 < (g + 1) * group {
            let hc = min(4, (g + 1) * group - h0)
            let q0 = q + h0 * d, q1 = q0 + min(1, hc - 1) * d, q2 = q0 + min(2, hc - 1) * d
            let q3 = q0 + min(3, hc - 1) * d
            var a0 = Vec16(), a1 = Vec16(), a2 = Vec16(), a3 = Vec16()
            var c = 0
            while c < d {
              let kv = L.load16(keys, k + c)
              a0 = a0.addingProduct(load16(q0 + c), kv)
              a1 = a1.addingProduct(load16(q1 + c), kv)
              a2 = a2.addingProduct(load16(q2 + c), kv)
              a3 = a3.addingProduct(load16(q3 + c), kv)
              c += 16
            }
            let s = scores + h0 * ldS + i
            s[0] = treeSum(a0)
            if hc > 1 { s[ldS] = treeSum(a1) }
            if hc > 2 { s[2 * ldS] = treeSum(a2) }
            if hc > 3 { s[3 * ldS] = treeSum(a3) }
            h0 += hc
          }
        }
      }
    }
    for h in 0..<nq {
      let (m, finite, sum) = expShifted(scores + h * ldS, n, scale: scale)
      maxima[h] = finite ? m * scale : .nan
      sums[h] = sum
    }
    if d % 16 != 0 {
      out.update(repeating: 0, count: nq * d)
      for i in 0..<n {
        for h in 0..<nq {
          let v = (first + i) * stride + h / group * d, weight = scores[h * ldS + i], o = out + h * d
          for c in 0..<d { o[c] += weight * L.load(values, v + c) }
        }
      }
      return
    }
    // Blocks of positions (their cache rows stay in cache while every head
    // reads them); per block, 16 output lanes of up to 4 query heads at a
    // time in registers, each value row read once for them. Each output sums
    // its positions in order, as an axpy per position would.
    out.update(repeating: 0, count: nq * d)
    let block = 32
    var i0 = 0
    while i0 < n {
      let i1 = min(n, i0 + block)
      for g in 0..<nkv {
        var h0 = g * group
        while h0 < (g + 1) * group {
          let hc = min(4, (g + 1) * group - h0)
          let p0 = scores + h0 * ldS, p1 = p0 + min(1, hc - 1) * ldS, p2 = p0 + min(2, hc - 1) * ldS
          let p3 = p0 + min(3, hc - 1) * ldS
          let o = out + h0 * d
          var c = 0
          while c < d {
            var a0 = load16(o + c), a1 = load16(o + min(1, hc - 1) * d + c)
            var a2 = load16(o + min(2, hc - 1) * d + c), a3 = load16(o + min(3, hc - 1) * d + c)
            let v = first * stride + g * d + c
            for i in i0..<i1 {
              let vv = L.load16(values, v + i * stride)
              a0 = a0.addingProduct(Vec16(repeating: p0[i]), vv)
              a1 = a1.addingProduct(Vec16(repeating: p1[i]), vv)
              a2 = a2.addingProduct(Vec16(repeating: p2[i]), vv)
              a3 = a3.addingProduct(Vec16(repeating: p3[i]), vv)
            }
            store16(a0, o + c)
            if hc > 1 { store16(a1, o + d + c) }
            if hc > 2 { store16(a2, o + 2 * d + c) }
            if hc > 3 { store16(a3, o + 3 * d + c) }
            c += 16
          }
          h0 += hc
        }
      }
      i0 = i1
    }
  }

  /// Floats between two heads' scores in attendSpan's scratch: the positions
  /// rounded up to 16, so every row is read and written 16 lanes at a time.
  package static func attendSpanScoreStride(positions: Int) -> Int { roundUp16(positions) }

  /// row[c] = exp(scale * (row[c] - max)) for c < n, in place, 16 lanes at a
  /// time with SIMD exp; the lanes from n to n rounded up to 16 become 0.
  /// Returns the largest of the n scores (unscaled), whether all n are
  /// finite, and the sum of the exponentials: a numerically stable softmax
  /// row, not yet normalized.
  static func expShifted(_ row: UnsafeMutablePointer<Float>, _ n: Int, scale: Float)
    -> (max: Float, finite: Bool, sum: Float) {
    let lane = SIMD16<Int32>(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
    let scaleV = Vec16(repeating: scale)
    let (m, finite) = maxAndFinite(row, n)
    let mv = Vec16(repeating: m)
    var sum = Vec16()
    var c = 0
    while c + 16 <= n {
      let e = exp16((load16(row + c) - mv) * scaleV)
      store16(e, row + c)
      sum += e
      c += 16
    }
    if c < n {
      let e = Vec16().replacing(with: exp16((load16(row + c) - mv) * scaleV), where: lane .< Int32(n - c))
      store16(e, row + c)
      sum += e
    }
    return (m, finite, sum.sum())
  }

  /// The softmax output of `spans` partial results of attendSpan over
  /// consecutive spans (span w: partial + w * partialStride, laid out as
  /// [heads * d outputs, heads maxima, heads sums]), in span order: per head,
  /// sum_w exp(maxima_w - M) out_w / sum_w exp(maxima_w - M) sums_w with M the
  /// largest maximum. out: [heads * d].
  package static func mergeSpans(_ partial: UnsafePointer<Float>, partialStride: Int, spans: Int, heads nq: Int, d: Int,
                                 out: UnsafeMutablePointer<Float>) {
    for h in 0..<nq {
      var top = -Float.infinity, poisoned = false
      for w in 0..<spans {
        let m = partial[w * partialStride + nq * d + h]
        if m.isNaN { poisoned = true }
        top = max(top, m)
      }
      let dst = out + h * d
      if poisoned || !top.isFinite {
        dst.update(repeating: .nan, count: d)
        continue
      }
      dst.update(repeating: 0, count: d)
      var total: Float = 0
      for w in 0..<spans {
        let base = partial + w * partialStride
        let weight = expf(base[nq * d + h] - top)
        total += weight * base[nq * d + nq + h]
        axpy(weight, base + h * d, dst, d)
      }
      let inv = 1 / total
      for c in 0..<d { dst[c] *= inv }
    }
  }

  /// Floats of one span's partial result for mergeSpans: outputs, maxima, sums.
  package static func spanPartialFloats(heads nq: Int, d: Int) -> Int { roundUp16(nq * d + 2 * nq) }

  /// Causal attention of a block of queries as matrix products: `count` query
  /// tokens at positions first ..< first + count, each for the `group` query
  /// heads that share one key/value head (GQA), so that the keys and values are
  /// read once for all of them. Query (i, j) (token i, head j of the group) is
  /// the d floats at q + i * ldq + j * d and its output goes to out + i * ldo + j * d;
  /// keys/values: position p at base + p * stride (the kv head's slice); token i
  /// sees positions 0 ... first + i.
  ///
  /// S = Q K^T over positions 0 ..< first + count (no key beyond the block's last
  /// position is multiplied), then per row the causal mask and a numerically
  /// stable softmax of scale * S with SIMD exp, then O = P V; each row is
  /// divided by its sum on the way out. A non-finite score makes its row's
  /// output NaN, as attendOne does; a non-finite value row of a later token of
  /// the block can reach earlier rows of that block (0 * NaN in the product),
  /// which are then non-finite too.
  /// With `lse`, the log-sum-exp of each row's scaled scores (what backward
  /// needs to rebuild the probabilities) goes to lse[j * ldLSE + i].
  /// scratch: attendBlockScratchFloats(count:group:first:d:) floats, 64-byte aligned.
  package static func attendBlock(q: UnsafePointer<Float>, ldq: Int, group: Int, count: Int, first: Int,
                                  keys: UnsafePointer<Float>, values: UnsafePointer<Float>, stride: Int, d: Int,
                                  scale: Float, out: UnsafeMutablePointer<Float>, ldo: Int,
                                  lse: UnsafeMutablePointer<Float>? = nil, ldLSE: Int = 0,
                                  scratch: UnsafeMutablePointer<Float>) {
    guard count > 0, group > 0 else { return }
    let layout = AttendBlockLayout(count: count, group: group, first: first, d: d)
    let rows = layout.rows, keyCount = layout.keyCount, ldS = layout.ldS
    let qs = scratch, s = scratch + layout.scoresOffset, o = scratch + layout.outputOffset
    let inv = scratch + layout.inverseOffset
    // Q: rows ordered head by head (row j * count + i).
    for j in 0..<group {
      for i in 0..<count { (qs + (j * count + i) * d).update(from: q + i * ldq + j * d, count: d) }
    }
    // S = Q K^T; O's space is free until P V and serves as the product's scratch.
    GEMM.xWt(n: rows, rows: keyCount, k: d, x: qs, ldx: d, w: WeightMatrix(base: keys, dtype: .f32, ld: stride),
             c: s, ldc: ldS, accumulate: false, scratch: o, scratchFloats: rows * d)
    for r in 0..<rows {
      let row = s + r * ldS
      let n = first + r % count + 1   // positions this row sees
      // P = exp(scale * (S - max)) over the visible positions, 0 beyond them.
      let (m, finite, total) = expShifted(row, n, scale: scale)
      var c = roundUp16(n)
      while c < keyCount {
        store16(Vec16(), row + c)
        c += 16
      }
      inv[r] = finite ? 1 / total : .nan
      if let lse { lse[r / count * ldLSE + r % count] = finite ? m * scale + logf(total) : .nan }
    }
    // O = P V.
    GEMM.aW(n: rows, cols: d, k: keyCount, a: s, lda: ldS, w: WeightMatrix(base: values, dtype: .f32, ld: stride),
            c: o, ldc: d, accumulate: false)
    for r in 0..<rows {
      let j = r / count, i = r % count
      let src = o + r * d, dst = out + i * ldo + j * d
      let f = inv[r], fv = Vec16(repeating: f)
      var c = 0
      while c + 16 <= d {
        store16(load16(src + c) * fv, dst + c)
        c += 16
      }
      while c < d {
        dst[c] = src[c] * f
        c += 1
      }
    }
  }

  /// Floats of scratch attendBlock needs for a block of `count` tokens of
  /// `group` heads starting at position `first`.
  package static func attendBlockScratchFloats(count: Int, group: Int, first: Int, d: Int) -> Int {
    AttendBlockLayout(count: count, group: group, first: first, d: d).floats
  }
}

/// attendBlock's scratch: Q [rows, d], S [rows, ldS], O [rows, d], 1/sum [rows],
/// each starting on a 64-byte boundary; ldS is the key count rounded up to 16
/// so that every row can be read and written 16 lanes at a time.
package struct AttendBlockLayout {
  package let rows: Int, keyCount: Int, ldS: Int
  let scoresOffset: Int, outputOffset: Int, inverseOffset: Int, floats: Int

  init(count: Int, group: Int, first: Int, d: Int) {
    rows = count * group
    keyCount = first + count
    ldS = roundUp16(keyCount)
    scoresOffset = roundUp16(rows * d)
    outputOffset = scoresOffset + rows * ldS
    inverseOffset = outputOffset + roundUp16(rows * d)
    floats = inverseOffset + roundUp16(rows)
  }
}

/// A rotary table: cos and sin of pos * base^(-2i/d) for i < d/2, grown on demand.
package final class RotaryTable {
  package let headDim: Int
  package let base: Double
  private(set) var positions = 0
  private var cosTable: [Float] = []
  private var sinTable: [Float] = []

  package init(headDim: Int, base: Double) {
    self.headDim = headDim
    self.base = base
  }

  package func ensure(_ count: Int) {
    guard count > positions else { return }
    let half = headDim / 2
    let newCount = max(count, positions * 2, 64)
    cosTable.reserveCapacity(newCount * half)
    sinTable.reserveCapacity(newCount * half)
    for p in positions..<newCount {
      for i in 0..<half {
        let invFreq = pow(base, -2 * Double(i) / Double(headDim))
        let angle = Double(p) * invFreq
        cosTable.append(Float(cos(angle)))
        sinTable.append(Float(sin(angle)))
      }
    }
    positions = newCount
  }

  /// cos and sin rows of position p (valid until the next ensure).
  package func withRow<R>(_ p: Int, _ body: (UnsafePointer<Float>, UnsafePointer<Float>) -> R) -> R {
    let half = headDim / 2
    return cosTable.withUnsafeBufferPointer { c in
      sinTable.withUnsafeBufferPointer { s in body(c.baseAddress! + p * half, s.baseAddress! + p * half) }
    }
  }
}

/// A dense weight [rows, cols] (owned): f32, bf16, or quantized (Q8_0, Q4_0,
/// Q4_1 rows in quant.c's packed layout), with an optional f32 bias [rows].
package final class DenseWeight: @unchecked Sendable {
  package let rows: Int
  package let cols: Int
  package let storage: AlignedBuffer       // f32 or bf16 elements, or packed quantized rows
  package let dtype: DType
  package let bias: AlignedBuffer?

  /// `values` [rows, cols] stored as `dtype` (quantized types: cols a multiple
  /// of 32, GGML's rounding). Storage comes from `arena` when given (a model's
  /// weights), else is owned.
  package convenience init(rows: Int, cols: Int, dtype: DType, values: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                           what: String, arena: WeightArena? = nil) throws {
    try self.init(rows: rows, cols: cols, dtype: dtype, bias: bias, what: what, arena: arena) { dst in
      let count = rows * cols
      switch dtype {
      case .bf16:
        let out = dst.assumingMemoryBound(to: UInt16.self)
        for i in 0..<count { out[i] = floatToBF16(values[i]) }
      case .f32, .f16:
        dst.assumingMemoryBound(to: Float.self).update(from: values, count: count)
      case .q8_0, .q4_0, .q4_1:
        packQuantizedRows(dtype, values: values, rows: rows, cols: cols, ld: cols, into: dst)
      }
    }
  }

  /// GGML blocks of `dtype` (a quantized type; rows of cols / 32 blocks, as
  /// GGUF stores them) kept as they are, repacked per row.
  package convenience init(rows: Int, cols: Int, quantized dtype: DType, blocks: UnsafeRawPointer, bias: UnsafePointer<Float>?,
                           what: String, arena: WeightArena? = nil) throws {
    guard dtype.isQuantized else { throw MoEError.invalid("\(what): \(dtype.name) is not a quantized type") }
    try self.init(rows: rows, cols: cols, dtype: dtype, bias: bias, what: what, arena: arena) { dst in
      packQuantizedRows(dtype, blocks: blocks, rows: rows, cols: cols, blockStride: cols / 32 * dtype.blockBytes, into: dst)
    }
  }

  /// f32 or bf16 rows [rows, cols] that `read(part, into)` writes part by
  /// part (`parts`: the rows of each) as f32: straight into the storage for
  /// f32, through `staging` (the largest part's floats, reused) for bf16, so
  /// that loading makes no whole copy of a weight.
  package convenience init(rows: Int, cols: Int, dtype: DType, parts: [Int], bias: UnsafePointer<Float>?,
                           what: String, arena: WeightArena?, staging: ScratchSet,
                           read: (Int, UnsafeMutablePointer<Float>) throws -> Void) throws {
    guard dtype == .f32 || dtype == .bf16 else { throw MoEError.invalid("\(what): \(dtype.name) is not f32 or bf16") }
    guard parts.allSatisfy({ $0 >= 0 }), parts.reduce(0, +) == rows else {
      throw MoEError.shape("\(what): parts of \(parts) rows do not make \(rows) rows")
    }
    let buffer = dtype == .f32 ? nil : try staging.get("weight staging", floats: (parts.max() ?? 0) * cols)
    try self.init(rows: rows, cols: cols, dtype: dtype, bias: bias, what: what, arena: arena) { dst in
      var row0 = 0
      for (i, r) in parts.enumerated() {
        if let buffer {
          try read(i, buffer)
          encodeFromFloat(.bf16, src: buffer, count: r * cols, dst: dst + row0 * cols * 2)
        } else {
          try read(i, dst.assumingMemoryBound(to: Float.self) + row0 * cols)
        }
        row0 += r
      }
    }
  }

  private init(rows: Int, cols: Int, dtype: DType, bias: UnsafePointer<Float>?, what: String, arena: WeightArena?,
               fill: (UnsafeMutableRawPointer) throws -> Void) throws {
    guard dtype != .f16 else { throw MoEError.unsupported("\(what): f16 weights are stored as bf16 or f32") }
    guard !dtype.isQuantized || cols % 32 == 0 else {
      throw MoEError.shape("\(what): \(cols) columns are not a whole number of \(dtype.name) blocks of 32")
    }
    self.rows = rows
    self.cols = cols
    self.dtype = dtype
    _ = try checkedProduct([rows, cols], what: what)
    let bytes = try checkedProduct([rows, dtype.rowBytes(cols: cols)], what: what)
    let floats = (bytes + 3) / 4
    storage = try arena?.allocate(floats: floats, what: what) ?? AlignedBuffer(floats: floats, what: what)
    try fill(UnsafeMutableRawPointer(storage.pointer))
    if let bias {
      let b = try AlignedBuffer(floats: rows, what: what + " bias")
      b.pointer.update(from: bias, count: rows)
      self.bias = b
    } else {
      self.bias = nil
    }
  }

  var matrix: WeightMatrix { WeightMatrix(base: UnsafeRawPointer(storage.pointer), dtype: dtype, ld: cols) }
  /// Bytes of one stored row, and of all of them.
  package var rowBytes: Int { dtype.rowBytes(cols: cols) }
  package var bytes: Int { rows * rowBytes }

  /// Row r as f32 into out[cols].
  package func row(_ r: Int, into out: UnsafeMutablePointer<Float>) {
    if dtype.isQuantized {
      QuantizedGEMM.row(matrix, r, cols: cols, into: out)
    } else if dtype == .bf16 {
      widenBF16(UnsafeRawPointer(storage.pointer).assumingMemoryBound(to: UInt16.self) + r * cols, out, count: cols)
    } else {
      out.update(from: storage.pointer + r * cols, count: cols)
    }
  }
}

/// Query tokens at or above which the decoder's attention runs attendBlock.
let blockedAttentionMinTokens = 16

extension Runtime {
  /// Causal self-attention of T new tokens at positions start ..< start + T
  /// over keys and values that already hold positions 0 ..< start + T, for
  /// `sequences` independent sequences. Query of token t, head h of sequence
  /// s: q + (s * T + t) * ldq + h * d; key and value of its position p, kv head
  /// g: element (s * (start + T) + p) * kvStride + g * d of keys/values (a KV
  /// cache has kvStride = kvHeads * d; a training pass reads them from its
  /// fused q/k/v rows), f32, or bf16 when `kvType` is .bf16 (a
  /// reduced-precision KV cache, read by decode only: fewer than
  /// blockedAttentionMinTokens tokens, no `lse`); output: out + (s * T + t) * ldo + h * d. With `lse` (training),
  /// the log-sum-exp of every query row's scaled scores goes to
  /// lse[(s * heads + h) * T + t]. Fewer than blockedAttentionMinTokens
  /// tokens without `lse` (decode) run attendSpan over spans of positions split
  /// over the workers and merged in order; others run
  /// attendBlock per (sequence, query block, kv head), split over the workers
  /// in a fixed order by cost, so a given thread count always gives the same bits.
  package func causalAttention(q: UnsafePointer<Float>, ldq: Int, keys: UnsafeRawPointer, values: UnsafeRawPointer,
                               kvType: DType = .f32, kvStride: Int, out: UnsafeMutablePointer<Float>, ldo: Int, tokens T: Int, start: Int,
                               sequences: Int = 1, heads nq: Int, kvHeads nkv: Int, headDim d: Int,
                               lse: UnsafeMutablePointer<Float>? = nil, scratch: ScratchSet) throws {
    guard nq > 0, nkv > 0, nq % nkv == 0, d > 0, start >= 0, sequences >= 1, kvStride >= nkv * d else {
      throw MoEError.invalid("attention: \(nq) query heads over \(nkv) KV heads of dimension \(d) from position \(start)")
    }
    guard kvType == .f32 || kvType == .bf16 else {
      throw MoEError.invalid("attention: keys and values of type \(kvType.name); f32 or bf16 only")
    }
    guard T > 0 else { return }
    let W = workerCount, keyCount = start + T, group = nq / nkv, kvBytes = kvType.elementBytes
    let scale = 1 / Float(d).squareRoot()
    let small = W == 1 || sequences * T * nq * keyCount * d < 1 << 15
    if T < blockedAttentionMinTokens && lse == nil {
      // Each token row's positions split into up to W spans (at least
      // minSpanPositions each), span w on worker w; the caller merges them in
      // span order, so a thread count always gives the same bits.
      let rows = sequences * T, partialStride = ModelKernels.spanPartialFloats(heads: nq, d: d)
      let spans = max(1, min(W, keyCount / Self.minSpanPositions))
      let ldS = ModelKernels.attendSpanScoreStride(positions: (keyCount + spans - 1) / spans)
      let scores = try scratch.get("scores", floats: W * nq * ldS)
      let partial = try scratch.get("attention spans", floats: rows * spans * partialStride)
      let attendSpans: (Int, UnsafeMutablePointer<Float>) -> Void = { w, buffer in
        for row in 0..<rows {
          let s = row / T, t = row % T, n = start + t + 1
          let first = n * w / spans, end = n * (w + 1) / spans
          let kv = s * keyCount * kvStride * kvBytes
          let result = partial + (row * spans + w) * partialStride
          ModelKernels.attendSpan(q: q + row * ldq, heads: nq, kvHeads: nkv, d: d, keys: keys + kv,
                                  values: values + kv, kvType: kvType, stride: kvStride, first: first, end: end, scale: scale,
                                  scores: buffer, out: result, maxima: result + nq * d, sums: result + nq * d + nq)
        }
      }
      if spans == 1 {
        attendSpans(0, scores)
      } else {
        pool.run { w in if w < spans { attendSpans(w, scores + w * nq * ldS) } }
      }
      for row in 0..<rows {
        ModelKernels.mergeSpans(partial + row * spans * partialStride, partialStride: partialStride, spans: spans,
                                heads: nq, d: d, out: out + row * ldo)
      }
      return
    }
    guard kvType == .f32 else {
      throw MoEError.invalid("attention: bf16 keys and values are read by decode only (fewer than \(blockedAttentionMinTokens) tokens); got \(T)")
    }
    let keys32 = keys.assumingMemoryBound(to: Float.self), values32 = values.assumingMemoryBound(to: Float.self)
    // Items in order: sequence, then query block b (tokens b * B ..< min(T, (b + 1) * B)), then kv head.
    let B = Self.attentionBlockTokens(tokens: T, keys: keyCount, group: group, kvHeads: nkv * sequences, workers: W)
    let blocks = (T + B - 1) / B, items = sequences * blocks * nkv
    let perWorker = ModelKernels.attendBlockScratchFloats(count: B, group: group, first: keyCount - B, d: d)
    let buffer = try scratch.get("attention", floats: W * perWorker)
    let attendItems: (Range<Int>, UnsafeMutablePointer<Float>) -> Void = { r, work in
      for item in r {
        let s = item / (blocks * nkv), b = item / nkv % blocks, g = item % nkv
        let t0 = b * B, count = min(T, t0 + B) - t0, row = s * T + t0
        let kv = s * keyCount * kvStride + g * d
        ModelKernels.attendBlock(q: q + row * ldq + g * group * d, ldq: ldq, group: group, count: count,
                                 first: start + t0, keys: keys32 + kv, values: values32 + kv, stride: kvStride,
                                 d: d, scale: scale, out: out + row * ldo + g * group * d, ldo: ldo,
                                 lse: lse.map { $0 + (s * nq + g * group) * T + t0 }, ldLSE: T, scratch: work)
      }
    }
    if small {
      attendItems(0..<items, buffer)
      return
    }
    // An item's cost grows with the positions its block sees.
    let costs = (0..<items).map { item in
      let t0 = item / nkv % blocks * B
      return (min(T, t0 + B) - t0) * (start + min(T, t0 + B))
    }
    let bounds = Self.splitByCost(costs, parts: W)
    pool.run { w in
      if bounds[w + 1] > bounds[w] { attendItems(bounds[w]..<bounds[w + 1], buffer + w * perWorker) }
    }
  }

  /// Fewest positions of one decode attention span on its own worker.
  static let minSpanPositions = 256

  /// Query tokens per attendBlock call: 64, halved (not below 16) until every
  /// worker has about two blocks and a block's scores fit in 1 MiB.
  package static func attentionBlockTokens(tokens T: Int, keys: Int, group: Int, kvHeads: Int, workers: Int) -> Int {
    var b = 64
    while b > 16 && (kvHeads * ((T + b - 1) / b) < 2 * workers || group * b * keys > 1 << 18) { b /= 2 }
    return min(b, T)
  }

  /// Boundaries (parts + 1 of them) of contiguous runs of items with about
  /// equal summed cost: part w is bounds[w] ..< bounds[w + 1].
  package static func splitByCost(_ costs: [Int], parts: Int) -> [Int] {
    let total = max(costs.reduce(0, +), 1)
    var bounds = [0], sum = 0, item = 0
    for w in 1..<max(parts, 1) {
      // Items whose cost starts before w / parts of the total belong to earlier parts.
      while item < costs.count && sum * parts < w * total {
        sum += costs[item]
        item += 1
      }
      bounds.append(item)
    }
    bounds.append(costs.count)
    return bounds
  }

  /// Worker `worker`'s share of `count` columns or rows, split in 16-wide units.
  func unitRange(_ count: Int, worker: Int) -> Range<Int> {
    let units = (count + 15) / 16, W = workerCount
    return min(count, units * worker / W * 16)..<min(count, units * (worker + 1) / W * 16)
  }

  /// Whether a product with `rows` rows of C and `cols` columns splits its
  /// rows over the workers rather than its columns. Each worker packs the
  /// whole of the operand that runs along the dimension not split (A when the
  /// columns are split, B when the rows are) and its share of the other, so
  /// splitting the larger dimension packs the fewest values. Rows are split
  /// only when each worker's share stays above the few-token paths' limit.
  /// Each element's sum is the same either way.
  func splitsRows(rows: Int, cols: Int) -> Bool {
    rows > cols && rows / max(workerCount, 1) > smallGEMMTokenLimit
  }

  /// Worker `worker`'s block of a product's C [rows, cols]: its unitRange of
  /// the rows and all columns when `byRows`, else all rows and its unitRange
  /// of the columns.
  func share(rows: Int, cols: Int, byRows: Bool, worker: Int) -> (rows: Range<Int>, cols: Range<Int>) {
    byRows ? (unitRange(rows, worker: worker), 0..<cols) : (0..<rows, unitRange(cols, worker: worker))
  }

  /// out[T, w.rows] = x[T, w.cols] * w^T (+ bias), split over the workers in
  /// 16-wide units: by output columns (each worker streams its own rows of
  /// the weight), or by tokens where there are more tokens than output columns
  /// (splitsRows; f32 and bf16 weights).
  /// `callTokens`: the tokens of the call these T rows are a chunk of (default T).
  package func linear(_ x: UnsafePointer<Float>, tokens T: Int, _ w: DenseWeight, _ out: UnsafeMutablePointer<Float>,
                      scratch: [AlignedBuffer], scratchFloats: Int, compute: ComputePrecision = .f32,
                      callTokens: Int? = nil) {
    guard T > 0 else { return }
    let W = workerCount
    let matrix = w.matrix
    let byTokens = !matrix.dtype.isQuantized && splitsRows(rows: T, cols: w.rows)
    let body: (Int) -> Void = { worker in
      let (tokens, cols) = self.share(rows: T, cols: w.rows, byRows: byTokens, worker: worker)
      let t0 = tokens.lowerBound, c0 = cols.lowerBound
      guard !tokens.isEmpty, !cols.isEmpty else { return }
      GEMM.xWt(n: tokens.count, rows: cols.count, k: w.cols, x: x + t0 * w.cols, ldx: w.cols,
               w: matrix.offset(row: c0, col: 0), c: out + t0 * w.rows + c0, ldc: w.rows, accumulate: false,
               scratch: scratch[worker].pointer, scratchFloats: scratchFloats, compute: compute,
               callTokens: callTokens ?? T)
      if let bias = w.bias {
        for t in tokens { axpy(1, bias.pointer + c0, out + t * w.rows + c0, cols.count) }
      }
    }
    if W == 1 || T * w.rows * w.cols < 1 << 15 {
      for worker in 0..<W { body(worker) }
    } else {
      pool.run(body)
    }
  }
}
