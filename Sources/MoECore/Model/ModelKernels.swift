// Decoder kernels: RMSNorm, rotary embeddings, causal attention over a KV
// cache, and a row-parallel linear layer. Each has a plain reference in the
// tests (tests/python and ModelKernelTests).

#if canImport(Glibc)
import Glibc
#endif

enum ModelKernels {
  /// out[H] = x[H] / sqrt(mean(x^2) + eps) * weight[H]  (HF: statistics in f32).
  static func rmsNorm(_ x: UnsafePointer<Float>, _ weight: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>,
                      _ n: Int, eps: Float) {
    let meanSquare = dot(x, x, n) / Float(n)
    let scale = 1 / (meanSquare + eps).squareRoot()
    for i in 0..<n { out[i] = x[i] * scale * weight[i] }
  }

  /// Rotates one head vector v[d] in place for position `pos` (HF rotate_half
  /// layout: pairs (i, i + d/2)); cos/sin: [d/2] for that position.
  @inline(__always)
  static func rope(_ v: UnsafeMutablePointer<Float>, _ d: Int, cos: UnsafePointer<Float>, sin: UnsafePointer<Float>) {
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
  static func attendOne(q: UnsafePointer<Float>, keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
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
}

/// A rotary table: cos and sin of pos * base^(-2i/d) for i < d/2, grown on demand.
final class RotaryTable {
  let headDim: Int
  let base: Double
  private(set) var positions = 0
  private var cosTable: [Float] = []
  private var sinTable: [Float] = []

  init(headDim: Int, base: Double) {
    self.headDim = headDim
    self.base = base
  }

  func ensure(_ count: Int) {
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
  func withRow<R>(_ p: Int, _ body: (UnsafePointer<Float>, UnsafePointer<Float>) -> R) -> R {
    let half = headDim / 2
    return cosTable.withUnsafeBufferPointer { c in
      sinTable.withUnsafeBufferPointer { s in body(c.baseAddress! + p * half, s.baseAddress! + p * half) }
    }
  }
}

/// A dense weight [rows, cols] (f32 or bf16, owned) with an optional f32 bias [rows].
final class DenseWeight: @unchecked Sendable {
  let rows: Int
  let cols: Int
  let storage: AlignedBuffer       // f32 or bf16 elements
  let dtype: DType
  let bias: AlignedBuffer?

  init(rows: Int, cols: Int, dtype: DType, values: UnsafePointer<Float>, bias: UnsafePointer<Float>?, what: String) throws {
    self.rows = rows
    self.cols = cols
    self.dtype = dtype
    let count = try checkedProduct([rows, cols], what: what)
    storage = try AlignedBuffer(floats: dtype == .bf16 ? (count + 1) / 2 : count, what: what)
    if dtype == .bf16 {
      let dst = UnsafeMutableRawPointer(storage.pointer).assumingMemoryBound(to: UInt16.self)
      for i in 0..<count { dst[i] = floatToBF16(values[i]) }
    } else {
      storage.pointer.update(from: values, count: count)
    }
    if let bias {
      let b = try AlignedBuffer(floats: rows, what: what + " bias")
      b.pointer.update(from: bias, count: rows)
      self.bias = b
    } else {
      self.bias = nil
    }
  }

  var matrix: WeightMatrix { WeightMatrix(base: UnsafeRawPointer(storage.pointer), dtype: dtype, ld: cols) }
  var bytes: Int { rows * cols * dtype.elementBytes }

  /// Row r as f32 into out[cols].
  func row(_ r: Int, into out: UnsafeMutablePointer<Float>) {
    if dtype == .bf16 {
      widenBF16(UnsafeRawPointer(storage.pointer).assumingMemoryBound(to: UInt16.self) + r * cols, out, count: cols)
    } else {
      out.update(from: storage.pointer + r * cols, count: cols)
    }
  }
}

extension Runtime {
  /// Worker `worker`'s share of `count` columns or rows, split in 16-wide units.
  func unitRange(_ count: Int, worker: Int) -> Range<Int> {
    let units = (count + 15) / 16, W = workerCount
    return min(count, units * worker / W * 16)..<min(count, units * (worker + 1) / W * 16)
  }

  /// out[T, w.rows] = x[T, w.cols] * w^T (+ bias), output rows split over the
  /// workers in 16-row units: each worker streams its own rows of the weight.
  func linear(_ x: UnsafePointer<Float>, tokens T: Int, _ w: DenseWeight, _ out: UnsafeMutablePointer<Float>,
              scratch: [AlignedBuffer], scratchFloats: Int) {
    guard T > 0 else { return }
    let W = workerCount
    let matrix = w.matrix
    let body: (Int) -> Void = { worker in
      let r = self.unitRange(w.rows, worker: worker), lo = r.lowerBound, hi = r.upperBound
      guard hi > lo else { return }
      GEMM.xWt(n: T, rows: hi - lo, k: w.cols, x: x, ldx: w.cols, w: matrix.offset(row: lo, col: 0),
               c: out + lo, ldc: w.rows, accumulate: false,
               scratch: scratch[worker].pointer, scratchFloats: scratchFloats)
      if let bias = w.bias {
        for t in 0..<T { axpy(1, bias.pointer + lo, out + t * w.rows + lo, hi - lo) }
      }
    }
    if W == 1 || T * w.rows * w.cols < 1 << 15 {
      for worker in 0..<W { body(worker) }
    } else {
      pool.run(body)
    }
  }
}
