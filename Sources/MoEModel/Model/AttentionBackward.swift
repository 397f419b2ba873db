// Backward of causal attention as matrix products, beside the blocked forward
// (ModelKernels.attendBlock): the probabilities are rebuilt from the queries,
// keys and each row's log-sum-exp that the forward kept, so a training pass
// never stores the seq_len^2 probability matrices.

import MoESupport
import MoERuntime
import MoELayer
#if canImport(Glibc)
import Glibc
#endif

extension ModelKernels {
  /// Gradients of one block of attendBlock: `count` query tokens at positions
  /// first ..< first + count of one sequence, for the `group` query heads of one
  /// kv head, over keys 0 ..< first + count. Layouts as attendBlock's; out is
  /// the forward's output, dOut its gradient (row (i, j) at dOut + i * ldo + j * d),
  /// lse the forward's log-sum-exp (lse[j * ldLSE + i]). Writes dq (row (i, j) at
  /// dq + i * ldq + j * d) and adds to dk and dv (position p at + p * stride).
  ///   P = exp(scale * Q K^T - lse) (0 above the diagonal), dV += P^T dO,
  ///   dP = dO V^T, dS = P * (dP - rowsum(dO * O)) * scale, dQ = dS K, dK += dS^T Q.
  /// scratch: attendBlockBackwardScratchFloats(count:group:first:d:) floats.
  static func attendBlockBackward(q: UnsafePointer<Float>, ldq: Int, group: Int, count: Int, first: Int,
                                  keys: UnsafePointer<Float>, values: UnsafePointer<Float>, stride: Int, d: Int,
                                  scale: Float, out: UnsafePointer<Float>, dOut: UnsafePointer<Float>, ldo: Int,
                                  lse: UnsafePointer<Float>, ldLSE: Int,
                                  dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>,
                                  dv: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>) {
    guard count > 0, group > 0 else { return }
    let layout = AttendBlockBackwardLayout(count: count, group: group, first: first, d: d)
    let rows = layout.rows, keyCount = layout.keyCount, ldS = layout.ldS
    let qs = scratch, dos = scratch + layout.gradOffset, p = scratch + layout.probOffset
    let ds = scratch + layout.dsOffset, dqs = scratch + layout.dqOffset, delta = scratch + layout.deltaOffset
    // Rows ordered head by head (row j * count + i), as attendBlock orders them.
    for j in 0..<group {
      for i in 0..<count {
        let r = j * count + i
        (qs + r * d).update(from: q + i * ldq + j * d, count: d)
        (dos + r * d).update(from: dOut + i * ldo + j * d, count: d)
        delta[r] = dot(dOut + i * ldo + j * d, out + i * ldo + j * d, d)
      }
    }
    let keyMatrix = WeightMatrix(base: keys, dtype: .f32, ld: stride)
    let valueMatrix = WeightMatrix(base: values, dtype: .f32, ld: stride)
    GEMM.xWt(n: rows, rows: keyCount, k: d, x: qs, ldx: d, w: keyMatrix, c: p, ldc: ldS, accumulate: false,
             scratch: dqs, scratchFloats: rows * d)
    GEMM.xWt(n: rows, rows: keyCount, k: d, x: dos, ldx: d, w: valueMatrix, c: ds, ldc: ldS, accumulate: false,
             scratch: dqs, scratchFloats: rows * d)
    let lane = SIMD16<Int32>(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
    let scaleV = Vec16(repeating: scale)
    for r in 0..<rows {
      let pr = p + r * ldS, dr = ds + r * ldS
      let n = first + r % count + 1   // positions this row sees
      let l = Vec16(repeating: lse[r / count * ldLSE + r % count]), dl = Vec16(repeating: delta[r])
      var c = 0
      while c < keyCount {
        var e = exp16(load16(pr + c) * scaleV - l)
        if c + 16 > n { e = Vec16().replacing(with: e, where: lane .< Int32(n - c)) }
        store16(e, pr + c)
        store16(e * (load16(dr + c) - dl) * scaleV, dr + c)
        c += 16
      }
    }
    // dV += P^T dO; dK += dS^T Q; dQ = dS K.
    GEMM.atB(n: rows, m: keyCount, cols: d, a: p, lda: ldS, b: dos, ldb: d, c: dv, ldc: stride)
    GEMM.atB(n: rows, m: keyCount, cols: d, a: ds, lda: ldS, b: qs, ldb: d, c: dk, ldc: stride)
    GEMM.aW(n: rows, cols: d, k: keyCount, a: ds, lda: ldS, w: keyMatrix, c: dqs, ldc: d, accumulate: false)
    for j in 0..<group {
      for i in 0..<count { (dq + i * ldq + j * d).update(from: dqs + (j * count + i) * d, count: d) }
    }
  }

  static func attendBlockBackwardScratchFloats(count: Int, group: Int, first: Int, d: Int) -> Int {
    AttendBlockBackwardLayout(count: count, group: group, first: first, d: d).floats
  }

  /// The plain reference of attention's backward for one sequence: per
  /// (head, query token) the probabilities recomputed with scalar exp, then
  /// dP, dS and the products as loops. q/k/v rows of token t at base + t * ld
  /// (head h's q at + h * d, kv head g's k at kOffset + g * d, v at vOffset + g * d);
  /// dOut [T, heads * d]; adds into dqkv (same layout as the q/k/v rows).
  package static func attentionBackwardReference(qkv: UnsafePointer<Float>, ld: Int, tokens T: Int, heads nq: Int,
                                                 kvHeads nkv: Int, d: Int, dOut: UnsafePointer<Float>,
                                                 dqkv: UnsafeMutablePointer<Float>) {
    let group = nq / nkv, scale = 1 / Float(d).squareRoot()
    let kOffset = nq * d, vOffset = (nq + nkv) * d
    var prob = [Float](repeating: 0, count: T), dp = [Float](repeating: 0, count: T)
    for head in 0..<nq {
      let g = head / group
      for t in 0..<T {
        let q = qkv + t * ld + head * d
        var m = -Float.infinity
        for j in 0...t { prob[j] = dot(q, qkv + j * ld + kOffset + g * d, d) * scale; m = max(m, prob[j]) }
        var sum: Float = 0
        for j in 0...t { prob[j] = expf(prob[j] - m); sum += prob[j] }
        let dout = dOut + t * nq * d + head * d
        var inner: Float = 0
        for j in 0...t {
          prob[j] /= sum
          dp[j] = dot(dout, qkv + j * ld + vOffset + g * d, d)
          inner += prob[j] * dp[j]
        }
        for j in 0...t {
          let dsj = prob[j] * (dp[j] - inner) * scale
          axpy(dsj, qkv + j * ld + kOffset + g * d, dqkv + t * ld + head * d, d)
          axpy(dsj, q, dqkv + j * ld + kOffset + g * d, d)
          axpy(prob[j], dout, dqkv + j * ld + vOffset + g * d, d)
        }
      }
    }
  }
}

/// attendBlockBackward's scratch: Q and dO [rows, d], P and dS [rows, ldS],
/// dQ [rows, d], rowsum(dO * O) [rows], each on a 64-byte boundary.
package struct AttendBlockBackwardLayout {
  package let rows: Int, keyCount: Int, ldS: Int
  let gradOffset: Int, probOffset: Int, dsOffset: Int, dqOffset: Int, deltaOffset: Int, floats: Int

  init(count: Int, group: Int, first: Int, d: Int) {
    rows = count * group
    keyCount = first + count
    ldS = roundUp16(keyCount)
    gradOffset = roundUp16(rows * d)
    probOffset = gradOffset + roundUp16(rows * d)
    dsOffset = probOffset + rows * ldS
    dqOffset = dsOffset + rows * ldS
    deltaOffset = dqOffset + roundUp16(rows * d)
    floats = deltaOffset + roundUp16(rows)
  }
}

extension Runtime {
  /// Backward of causalAttention(…, lse:) over `sequences` fresh sequences of T
  /// tokens (start 0) whose queries, keys and values are the rows of `qkv`
  /// (row stride ld: queries at + h * d, keys at + kOffset, values at + vOffset
  /// = kOffset + kvHeads * d). out/dOut: [sequences * T, heads * d]; lse as the
  /// forward wrote it. Writes dq and adds dk, dv into dqkv (same layout as qkv;
  /// its key and value columns must start at 0). One item per (sequence, kv
  /// head) runs its query blocks in order on one worker, so a given thread
  /// count always gives the same bits.
  package func causalAttentionBackward(qkv: UnsafePointer<Float>, ld: Int, out: UnsafePointer<Float>,
                                       dOut: UnsafePointer<Float>, lse: UnsafePointer<Float>,
                                       dqkv: UnsafeMutablePointer<Float>, tokens T: Int, sequences: Int,
                                       heads nq: Int, kvHeads nkv: Int, headDim d: Int, scratch: ScratchSet) throws {
    guard nq > 0, nkv > 0, nq % nkv == 0, d > 0, sequences >= 1 else {
      throw MoEError.invalid("attention backward: \(nq) query heads over \(nkv) KV heads of dimension \(d)")
    }
    guard T > 0 else { return }
    let W = workerCount, group = nq / nkv, scale = 1 / Float(d).squareRoot()
    let kOffset = nq * d, vOffset = (nq + nkv) * d, ldo = nq * d
    // Query blocks of up to 64 tokens, smaller when their scores would pass 1 MiB.
    var B = 64
    while B > 16 && group * B * T > 1 << 18 { B /= 2 }
    B = min(B, T)
    let perWorker = ModelKernels.attendBlockBackwardScratchFloats(count: B, group: group, first: T - B, d: d)
    let buffer = try scratch.get("attention_backward", floats: W * perWorker)
    let items = sequences * nkv
    let run: (Range<Int>, UnsafeMutablePointer<Float>) -> Void = { r, work in
      for item in r {
        let s = item / nkv, g = item % nkv
        let base = s * T
        var t0 = 0
        while t0 < T {
          let count = min(T, t0 + B) - t0, row = base + t0
          ModelKernels.attendBlockBackward(
            q: qkv + row * ld + g * group * d, ldq: ld, group: group, count: count, first: t0,
            keys: qkv + base * ld + kOffset + g * d, values: qkv + base * ld + vOffset + g * d, stride: ld, d: d,
            scale: scale, out: out + row * ldo + g * group * d, dOut: dOut + row * ldo + g * group * d, ldo: ldo,
            lse: lse + (s * nq + g * group) * T + t0, ldLSE: T,
            dq: dqkv + row * ld + g * group * d, dk: dqkv + base * ld + kOffset + g * d,
            dv: dqkv + base * ld + vOffset + g * d, scratch: work)
          t0 += count
        }
      }
    }
    if W == 1 || items == 1 {
      run(0..<items, buffer)
      return
    }
    pool.run { w in
      let lo = items * w / W, hi = items * (w + 1) / W
      if hi > lo { run(lo..<hi, buffer + w * perWorker) }
    }
  }
}
