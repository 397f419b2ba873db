// Matrix products used by the expert kernels. Large token counts go to
// OpenBLAS sgemm (single-threaded, called by each pinned worker on its own
// tile); few tokens (decode) go to a streaming kernel that reads each weight
// row once. bf16 weights are widened to f32 tile by tile.

import COpenBLAS

/// A row-major weight matrix view: f32 or bf16 elements, leading dimension `ld`
/// (in elements). Not owning.
public struct WeightMatrix: @unchecked Sendable {
  public var base: UnsafeRawPointer
  public var dtype: DType
  public var ld: Int

  public init(base: UnsafeRawPointer, dtype: DType, ld: Int) {
    self.base = base
    self.dtype = dtype
    self.ld = ld
  }

  /// The view starting at (row, col).
  @inline(__always)
  public func offset(row: Int, col: Int) -> WeightMatrix {
    WeightMatrix(base: base + (row * ld + col) * dtype.elementBytes, dtype: dtype, ld: ld)
  }

  @inline(__always)
  var f32: UnsafePointer<Float> { base.assumingMemoryBound(to: Float.self) }

  @inline(__always)
  var bf16: UnsafePointer<UInt16> { base.assumingMemoryBound(to: UInt16.self) }

  /// Element (row, col) as f32.
  @inline(__always)
  public func value(_ row: Int, _ col: Int) -> Float {
    dtype == .bf16 ? bf16ToFloat(bf16[row * ld + col]) : f32[row * ld + col]
  }

  /// The block rows x cols as f32 with its leading dimension: the matrix itself
  /// when it is f32, else widened into `scratch` (at least rows * cols floats).
  func f32Block(rows: Int, cols: Int, scratch: UnsafeMutablePointer<Float>) -> (UnsafePointer<Float>, Int) {
    if dtype == .f32 { return (f32, ld) }
    for r in 0..<rows { widenBF16(bf16 + r * ld, scratch + r * cols, count: cols) }
    return (UnsafePointer(scratch), cols)
  }
}

extension DType {
  var elementBytes: Int { self == .f32 ? 4 : 2 }
}

/// Token counts at or below this use the streaming kernel instead of sgemm.
public let smallGEMMTokenLimit = 16

enum GEMM {
  /// c[n, rows] (ldc) = x[n, k] (ldx) * w[rows, k]^T, or += when accumulate.
  /// `scratch` holds at least min(rows, chunk) * k floats for bf16 weights.
  static func xWt(n: Int, rows: Int, k: Int, x: UnsafePointer<Float>, ldx: Int,
                  w: WeightMatrix, c: UnsafeMutablePointer<Float>, ldc: Int,
                  accumulate: Bool, scratch: UnsafeMutablePointer<Float>, scratchFloats: Int) {
    guard n > 0, rows > 0 else { return }
    if n <= smallGEMMTokenLimit {
      if w.dtype == .bf16 && n * k <= scratchFloats {
        SmallGEMM.xWtBF16(n: n, rows: rows, k: k, x: x, ldx: ldx, w: w, c: c, ldc: ldc,
                          accumulate: accumulate, scratch: scratch)
      } else {
        SmallGEMM.xWt(n: n, rows: rows, k: k, x: x, ldx: ldx, w: w, c: c, ldc: ldc, accumulate: accumulate)
      }
      return
    }
    if w.dtype == .f32 {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(n), Int32(rows), Int32(k),
                  1, x, Int32(ldx), w.f32, Int32(w.ld), accumulate ? 1 : 0, c, Int32(ldc))
      return
    }
    // bf16: widen a chunk of weight rows at a time.
    let chunk = max(1, min(rows, scratchFloats / max(k, 1)))
    var r0 = 0
    while r0 < rows {
      let m = min(chunk, rows - r0)
      let (b, ldb) = w.offset(row: r0, col: 0).f32Block(rows: m, cols: k, scratch: scratch)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(n), Int32(m), Int32(k),
                  1, x, Int32(ldx), b, Int32(ldb), accumulate ? 1 : 0, c + r0, Int32(ldc))
      r0 += m
    }
  }

  /// c[n, cols] (ldc) = a[n, k] (lda) * w[k, cols] (w rows are k), or += when accumulate.
  /// `scratch` holds at least k * chunk floats for bf16 weights.
  static func aW(n: Int, cols: Int, k: Int, a: UnsafePointer<Float>, lda: Int,
                 w: WeightMatrix, c: UnsafeMutablePointer<Float>, ldc: Int,
                 accumulate: Bool, scratch: UnsafeMutablePointer<Float>, scratchFloats: Int) {
    guard n > 0, cols > 0 else { return }
    if w.dtype == .f32 {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(n), Int32(cols), Int32(k),
                  1, a, Int32(lda), w.f32, Int32(w.ld), accumulate ? 1 : 0, c, Int32(ldc))
      return
    }
    let chunk = max(1, min(cols, scratchFloats / max(k, 1)))
    var c0 = 0
    while c0 < cols {
      let m = min(chunk, cols - c0)
      let (b, ldb) = w.offset(row: 0, col: c0).f32Block(rows: k, cols: m, scratch: scratch)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(n), Int32(m), Int32(k),
                  1, a, Int32(lda), b, Int32(ldb), accumulate ? 1 : 0, c + c0, Int32(ldc))
      c0 += m
    }
  }

  /// c[m, cols] (ldc) += a[n, m]^T (lda) * b[n, cols] (ldb): weight gradients.
  static func atB(n: Int, m: Int, cols: Int, a: UnsafePointer<Float>, lda: Int,
                  b: UnsafePointer<Float>, ldb: Int, c: UnsafeMutablePointer<Float>, ldc: Int) {
    guard n > 0, m > 0, cols > 0 else { return }
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(m), Int32(cols), Int32(n),
                1, a, Int32(lda), b, Int32(ldb), 1, c, Int32(ldc))
  }
}

/// The decode kernel: c[i, j] = sum_h x[i, h] * w[j, h] for few tokens i.
/// Each weight row is read from memory once for all tokens; the kernel is
/// bound by memory bandwidth, so it is measured in GB/s.
enum SmallGEMM {
  static func xWt(n: Int, rows: Int, k: Int, x: UnsafePointer<Float>, ldx: Int,
                  w: WeightMatrix, c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool) {
    if w.dtype == .bf16 {
      run(BF16Rows.self, n: n, rows: rows, k: k, x: x, ldx: ldx, w: w, c: c, ldc: ldc, accumulate: accumulate)
    } else {
      run(F32Rows.self, n: n, rows: rows, k: k, x: x, ldx: ldx, w: w, c: c, ldc: ldc, accumulate: accumulate)
    }
  }

  @inline(__always)
  static func run<L: RowLoader>(_: L.Type, n: Int, rows: Int, k: Int, x: UnsafePointer<Float>, ldx: Int,
                                w: WeightMatrix, c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool) {
    let k16 = k & ~15
    for j in 0..<rows {
      let row = w.base + j * w.ld * w.dtype.elementBytes
      var i = 0
      // Four tokens at a time: one weight load feeds four FMAs.
      while i + 4 <= n {
        let x0 = x + i * ldx, x1 = x0 + ldx, x2 = x1 + ldx, x3 = x2 + ldx
        var a0 = Vec16(), a1 = Vec16(), a2 = Vec16(), a3 = Vec16()
        var h = 0
        while h < k16 {
          let wv = L.load16(row, h)
          a0 = a0.addingProduct(wv, load16(x0 + h))
          a1 = a1.addingProduct(wv, load16(x1 + h))
          a2 = a2.addingProduct(wv, load16(x2 + h))
          a3 = a3.addingProduct(wv, load16(x3 + h))
          h += 16
        }
        var s0 = a0.sum(), s1 = a1.sum(), s2 = a2.sum(), s3 = a3.sum()
        while h < k {
          let wv = L.load(row, h)
          s0 += wv * x0[h]; s1 += wv * x1[h]; s2 += wv * x2[h]; s3 += wv * x3[h]
          h += 1
        }
        store(s0, c + i * ldc + j, accumulate)
        store(s1, c + (i + 1) * ldc + j, accumulate)
        store(s2, c + (i + 2) * ldc + j, accumulate)
        store(s3, c + (i + 3) * ldc + j, accumulate)
        i += 4
      }
      while i < n {
        let x0 = x + i * ldx
        var a0 = Vec16(), a1 = Vec16()
        var h = 0
        // Two accumulators hide FMA latency for a single token.
        while h + 32 <= k16 {
          a0 = a0.addingProduct(L.load16(row, h), load16(x0 + h))
          a1 = a1.addingProduct(L.load16(row, h + 16), load16(x0 + h + 16))
          h += 32
        }
        while h < k16 {
          a0 = a0.addingProduct(L.load16(row, h), load16(x0 + h))
          h += 16
        }
        var s0 = (a0 + a1).sum()
        while h < k {
          s0 += L.load(row, h) * x0[h]
          h += 1
        }
        store(s0, c + i * ldc + j, accumulate)
        i += 1
      }
    }
  }

  /// bf16 rows without widening instructions: a 32-bit word holds elements
  /// 2m (low half) and 2m+1 (high half), so `word << 16` and `word & 0xFFFF0000`
  /// are those two elements as f32. x is split once into even and odd halves
  /// (in `scratch`, n * k floats) to match.
  static func xWtBF16(n: Int, rows: Int, k: Int, x: UnsafePointer<Float>, ldx: Int, w: WeightMatrix,
                      c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool,
                      scratch: UnsafeMutablePointer<Float>) {
    let k32 = k & ~31, half = k32 / 2
    for i in 0..<n {
      let src = x + i * ldx, even = scratch + i * k32, odd = even + half
      for m in 0..<half {
        even[m] = src[2 * m]
        odd[m] = src[2 * m + 1]
      }
    }
    let highMask = SIMD16<UInt32>(repeating: 0xFFFF_0000)
    for j in 0..<rows {
      let row = UnsafeRawPointer(w.bf16 + j * w.ld)
      let tailRow = w.bf16 + j * w.ld
      var i = 0
      // One token left: two accumulators, no repeated work.
      if n == 1 {
        let e0 = UnsafePointer(scratch), o0 = e0 + half
        var a0 = Vec16(), a1 = Vec16()
        var m = 0
        while m < half {
          let words = row.loadUnaligned(fromByteOffset: 4 * m, as: SIMD16<UInt32>.self)
          a0 = a0.addingProduct(unsafeBitCast(words &<< 16, to: Vec16.self), load16(e0 + m))
          a1 = a1.addingProduct(unsafeBitCast(words & highMask, to: Vec16.self), load16(o0 + m))
          m += 16
        }
        var s = (a0 + a1).sum()
        for h in k32..<k { s += bf16ToFloat(tailRow[h]) * x[h] }
        store(s, c + j, accumulate)
        continue
      }
      while i < n {
        let group = min(4, n - i)
        // Missing tokens of a short group repeat the group's first token.
        let e0 = UnsafePointer(scratch + i * k32)
        let e1 = group > 1 ? e0 + k32 : e0, e2 = group > 2 ? e0 + 2 * k32 : e0, e3 = group > 3 ? e0 + 3 * k32 : e0
        var a0 = Vec16(), a1 = Vec16(), a2 = Vec16(), a3 = Vec16()
        var m = 0
        while m < half {
          let words = row.loadUnaligned(fromByteOffset: 4 * m, as: SIMD16<UInt32>.self)
          let ev = unsafeBitCast(words &<< 16, to: Vec16.self)
          let od = unsafeBitCast(words & highMask, to: Vec16.self)
          a0 = a0.addingProduct(ev, load16(e0 + m)).addingProduct(od, load16(e0 + half + m))
          a1 = a1.addingProduct(ev, load16(e1 + m)).addingProduct(od, load16(e1 + half + m))
          a2 = a2.addingProduct(ev, load16(e2 + m)).addingProduct(od, load16(e2 + half + m))
          a3 = a3.addingProduct(ev, load16(e3 + m)).addingProduct(od, load16(e3 + half + m))
          m += 16
        }
        let s0 = a0.sum(), s1 = a1.sum(), s2 = a2.sum(), s3 = a3.sum()
        for q in 0..<group {
          var s = q == 0 ? s0 : (q == 1 ? s1 : (q == 2 ? s2 : s3))
          let xi = x + (i + q) * ldx
          for h in k32..<k { s += bf16ToFloat(tailRow[h]) * xi[h] }
          store(s, c + (i + q) * ldc + j, accumulate)
        }
        i += group
      }
    }
  }

  @inline(__always)
  static func store(_ v: Float, _ p: UnsafeMutablePointer<Float>, _ accumulate: Bool) {
    if accumulate { p.pointee += v } else { p.pointee = v }
  }
}

protocol RowLoader {
  static func load16(_ row: UnsafeRawPointer, _ i: Int) -> Vec16
  static func load(_ row: UnsafeRawPointer, _ i: Int) -> Float
}

enum F32Rows: RowLoader {
  @inline(__always) static func load16(_ row: UnsafeRawPointer, _ i: Int) -> Vec16 {
    row.loadUnaligned(fromByteOffset: i * 4, as: Vec16.self)
  }
  @inline(__always) static func load(_ row: UnsafeRawPointer, _ i: Int) -> Float {
    row.loadUnaligned(fromByteOffset: i * 4, as: Float.self)
  }
}

enum BF16Rows: RowLoader {
  @inline(__always) static func load16(_ row: UnsafeRawPointer, _ i: Int) -> Vec16 {
    loadBF16x16(row.assumingMemoryBound(to: UInt16.self) + i)
  }
  @inline(__always) static func load(_ row: UnsafeRawPointer, _ i: Int) -> Float {
    bf16ToFloat(row.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self))
  }
}

/// Plain references for the tests: Double accumulation, no blocking.
public enum GEMMReference {
  /// c[n, rows] = x[n, k] * w[rows, k]^T
  public static func xWt(n: Int, rows: Int, k: Int, x: [Float], w: WeightMatrix) -> [Float] {
    var c = [Float](repeating: 0, count: n * rows)
    for i in 0..<n {
      for j in 0..<rows {
        var s: Double = 0
        for h in 0..<k { s += Double(x[i * k + h]) * Double(w.value(j, h)) }
        c[i * rows + j] = Float(s)
      }
    }
    return c
  }
}

extension GEMM {
  /// Entry point for tests: the optimized product c[n, rows] = x[n, k] * w[rows, k]^T.
  public static func productForTesting(n: Int, rows: Int, k: Int, x: [Float], w: WeightMatrix) -> [Float] {
    var c = [Float](repeating: 0, count: n * rows)
    let scratch = UnsafeMutablePointer<Float>.allocate(capacity: 64 * max(k, 1))
    defer { scratch.deallocate() }
    x.withUnsafeBufferPointer { xp in
      c.withUnsafeMutableBufferPointer { cp in
        xWt(n: n, rows: rows, k: k, x: xp.baseAddress ?? UnsafePointer(scratch), ldx: k, w: w,
            c: cp.baseAddress ?? scratch, ldc: rows, accumulate: false,
            scratch: scratch, scratchFloats: 64 * max(k, 1))
      }
    }
    return c
  }
}
