// Matrix products of the library. Each pinned worker calls them on its own
// tile: the packed kernels of the active path (MoERuntime's Dispatch.swift: AVX-512, AVX2 or
// portable, or OpenBLAS's sgemm when forced) for large products, and for few
// tokens (decode) a streaming kernel that reads each weight row once. bf16
// weights are widened while they are packed. With bf16 compute (`compute:
// .bf16`) every product runs on the packed kernels (PackedGEMM.swift: on
// AVX512-BF16 where the CPU has it), whatever the token count: the streaming
// kernels are f32 only.

import COpenBLAS
import CMoECPU
import MoEKernelCode
import MoESupport
import MoERuntime

/// A row-major weight matrix view: f32 or bf16 elements, leading dimension `ld`
/// (in elements); or rows of quantized blocks (Q8_0, Q4_0, Q4_1 in quant.c's
/// packed layout) of `ld` elements each. Not owning.
public struct WeightMatrix: @unchecked Sendable {
  public var base: UnsafeRawPointer
  public var dtype: DType
  public var ld: Int

  public init(base: UnsafeRawPointer, dtype: DType, ld: Int) {
    self.base = base
    self.dtype = dtype
    self.ld = ld
  }

  /// The weight as a GEMM operand: B = w, or B = w^T when `transposed`.
  @inline(__always)
  func operand(transposed: Bool = false) -> MatrixOperand {
    MatrixOperand(base: base, ld: ld, transposed: transposed, bf16: dtype == .bf16)
  }

  /// The view starting at (row, col); `col` is 0 for quantized rows.
  @inline(__always)
  public func offset(row: Int, col: Int) -> WeightMatrix {
    if dtype.isQuantized { return WeightMatrix(base: base + row * dtype.rowBytes(cols: ld), dtype: dtype, ld: ld) }
    return WeightMatrix(base: base + (row * ld + col) * dtype.elementBytes, dtype: dtype, ld: ld)
  }

  @inlinable @inline(always)
  package var f32: UnsafePointer<Float> { base.assumingMemoryBound(to: Float.self) }

  @inlinable @inline(always)
  package var bf16: UnsafePointer<UInt16> { base.assumingMemoryBound(to: UInt16.self) }

  /// Element (row, col) as f32.
  @inlinable @inline(always)
  public func value(_ row: Int, _ col: Int) -> Float {
    dtype == .bf16 ? bf16ToFloat(bf16[row * ld + col]) : f32[row * ld + col]
  }
}

extension DType {
  /// Bytes of one element of the plain types (quantized rows: rowBytes(cols:)).
  package var elementBytes: Int { self == .f32 ? 4 : 2 }
}

/// Token counts at or below this use the streaming kernel instead of sgemm.
public let smallGEMMTokenLimit = 16

package enum GEMM {
  /// c[n, rows] (ldc) = x[n, k] (ldx) * w[rows, k]^T, or += when accumulate.
  /// `scratch` holds at least n * k floats for the bf16 decode kernel.
  /// `callTokens`: the tokens of the call the n rows are part of (default n):
  /// the path is chosen by it, so that every row of a call is computed alike.
  package static func xWt(n: Int, rows: Int, k: Int, x: UnsafePointer<Float>, ldx: Int,
                          w: WeightMatrix, c: UnsafeMutablePointer<Float>, ldc: Int,
                          accumulate: Bool, scratch: UnsafeMutablePointer<Float>, scratchFloats: Int,
                          compute: ComputePrecision = .f32, callTokens: Int? = nil,
                          walk: RowStreaming = Kernels.rowStreaming) {
    guard n > 0, rows > 0 else { return }
    if w.dtype.isQuantized {
      QuantizedGEMM.xWt(n: n, rows: rows, k: k, x: x, ldx: ldx, w: w, c: c, ldc: ldc, accumulate: accumulate,
                        compute: compute, callTokens: callTokens, walk: walk)
      return
    }
    if (callTokens ?? n) <= smallGEMMTokenLimit && compute == .f32 {
      if w.dtype == .bf16 && n * k <= scratchFloats {
        SmallGEMM.xWtBF16(n: n, rows: rows, k: k, x: x, ldx: ldx, w: w, c: c, ldc: ldc,
                          accumulate: accumulate, scratch: scratch, walk: walk)
      } else {
        SmallGEMM.xWt(n: n, rows: rows, k: k, x: x, ldx: ldx, w: w, c: c, ldc: ldc, accumulate: accumulate,
                      walk: walk)
      }
      return
    }
    Kernels.gemm(GEMMProblem(m: n, n: rows, k: k, a: MatrixOperand(base: x, ld: ldx),
                             b: w.operand(transposed: true),
                             c: c, ldc: ldc, accumulate: accumulate, compute: compute))
  }

  /// c[n, cols] (ldc) = a[n, k] (lda) * w[k, cols] (w rows are k), or += when accumulate.
  package static func aW(n: Int, cols: Int, k: Int, a: UnsafePointer<Float>, lda: Int,
                         w: WeightMatrix, c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool,
                         compute: ComputePrecision = .f32) {
    guard n > 0, cols > 0 else { return }
    if (n <= smallGEMMTokenLimit && compute == .f32) || w.dtype.isQuantized,
       let row = moe_thread_buffer(3, w.dtype.isQuantized ? max(cols, w.ld) : cols) {
      SmallGEMM.aW(n: n, cols: cols, k: k, a: a, lda: lda, w: w, c: c, ldc: ldc, accumulate: accumulate, row: row)
      return
    }
    Kernels.gemm(GEMMProblem(m: n, n: cols, k: k, a: MatrixOperand(base: a, ld: lda),
                             b: w.operand(),
                             c: c, ldc: ldc, accumulate: accumulate, compute: compute))
  }

  /// c[m, cols] (ldc) += a[n, m]^T (lda) * b[n, cols] (ldb): weight gradients.
  package static func atB(n: Int, m: Int, cols: Int, a: UnsafePointer<Float>, lda: Int,
                          b: UnsafePointer<Float>, ldb: Int, c: UnsafeMutablePointer<Float>, ldc: Int,
                          compute: ComputePrecision = .f32) {
    guard n > 0, m > 0, cols > 0 else { return }
    Kernels.gemm(GEMMProblem(m: m, n: cols, k: n, a: MatrixOperand(base: a, ld: lda, transposed: true),
                             b: MatrixOperand(base: b, ld: ldb), c: c, ldc: ldc, accumulate: true,
                             compute: compute))
  }
}

/// The decode kernel: c[i, j] = sum_h x[i, h] * w[j, h] for few tokens i.
/// Each weight row is read from memory once for all tokens; the kernel is
/// bound by memory bandwidth, so it is measured in GB/s.
package enum SmallGEMM {
  package static func xWt(n: Int, rows: Int, k: Int, x: UnsafePointer<Float>, ldx: Int,
                          w: WeightMatrix, c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool,
                          walk: RowStreaming = Kernels.rowStreaming) {
    if w.dtype == .bf16 {
      run(BF16Rows.self, n: n, rows: rows, k: k, x: x, ldx: ldx, w: w, c: c, ldc: ldc, accumulate: accumulate,
          walk: walk)
    } else {
      run(F32Rows.self, n: n, rows: rows, k: k, x: x, ldx: ldx, w: w, c: c, ldc: ldc, accumulate: accumulate,
          walk: walk)
    }
  }

  /// Walked `.sequential`, the rows are read one after another, each front
  /// to back: one stream that the hardware prefetchers follow. Walked
  /// `.hinted`, one token's product reads four rows side by side
  /// (vectorFourRows), and each row's first pass asks for the row two ahead.
  @inlinable @inline(always)
  package static func run<L: RowLoader>(_: L.Type, n: Int, rows: Int, k: Int, x: UnsafePointer<Float>, ldx: Int,
                                        w: WeightMatrix, c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool,
                                        walk: RowStreaming) {
    let k16 = k & ~15, elementBytes = w.dtype.elementBytes, rowBytes = w.ld * elementBytes
    let hinted = walk == .hinted
    var j0 = 0
    if n == 1 && hinted {
      j0 = rows & ~3
      vectorFourRows(L.self, rows: j0, k: k, x: x, w: w, c: c, accumulate: accumulate)
    }
    for j in j0..<rows {
      let row = w.base + j * rowBytes, ahead = row + 2 * rowBytes
      var i = 0
      // Four tokens at a time: one weight load feeds four FMAs.
      while i + 4 <= n {
        let x0 = x + i * ldx, x1 = x0 + ldx, x2 = x1 + ldx, x3 = x2 + ldx
        var a0 = Vec16(), a1 = Vec16(), a2 = Vec16(), a3 = Vec16()
        var h = 0
        let prefetching = hinted && i == 0
        while h < k16 {
          if prefetching { moe_prefetch(ahead + h * elementBytes) }
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
      // The tokens left (all of them for one token), one at a time.
      if hinted && i == 0 {
        for offset in stride(from: 0, to: k * elementBytes, by: 64) { moe_prefetch(ahead + offset) }
      }
      while i < n {
        store(rowDot(L.self, row, x + i * ldx, k: k), c + i * ldc + j, accumulate)
        i += 1
      }
    }
  }

  /// row . x over k elements, the row read front to back with four
  /// multiply-add chains (they hide the FMA latency), reduced by treeSum.
  @inline(__always)
  static func rowDot<L: RowLoader>(_: L.Type, _ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, k: Int) -> Float {
    let k64 = k & ~63, k16 = k & ~15
    var a0 = Vec16(), a1 = Vec16(), a2 = Vec16(), a3 = Vec16()
    var h = 0
    while h < k64 {
      a0 = a0.addingProduct(L.load16(row, h), load16(x + h))
      a1 = a1.addingProduct(L.load16(row, h + 16), load16(x + h + 16))
      a2 = a2.addingProduct(L.load16(row, h + 32), load16(x + h + 32))
      a3 = a3.addingProduct(L.load16(row, h + 48), load16(x + h + 48))
      h += 64
    }
    while h < k16 {
      a0 = a0.addingProduct(L.load16(row, h), load16(x + h))
      h += 16
    }
    var s = treeSum((a0 + a1) + (a2 + a3))
    while h < k {
      s += L.load(row, h) * x[h]
      h += 1
    }
    return s
  }

  /// c[j] (+)= w[j, :] . x for one token, four weight rows at a time (the
  /// `.hinted` walk): four streams and multiply-add chains, one x vector for
  /// four rows, and the rows two blocks ahead asked for as these are read.
  /// `rows` is a multiple of 4.
  @inline(__always)
  static func vectorFourRows<L: RowLoader>(_: L.Type, rows: Int, k: Int, x: UnsafePointer<Float>, w: WeightMatrix,
                                           c: UnsafeMutablePointer<Float>, accumulate: Bool) {
    let k16 = k & ~15, elementBytes = w.dtype.elementBytes, rowBytes = w.ld * elementBytes
    var j = 0
    while j < rows {
      let r0 = w.base + j * rowBytes, r1 = r0 + rowBytes, r2 = r1 + rowBytes, r3 = r2 + rowBytes
      let ahead = r0 + 8 * rowBytes
      var a0 = Vec16(), a1 = Vec16(), a2 = Vec16(), a3 = Vec16()
      var h = 0
      while h < k16 {
        prefetchFourRows(ahead + h * elementBytes, rowBytes: rowBytes)
        let xv = load16(x + h)
        a0 = a0.addingProduct(L.load16(r0, h), xv)
        a1 = a1.addingProduct(L.load16(r1, h), xv)
        a2 = a2.addingProduct(L.load16(r2, h), xv)
        a3 = a3.addingProduct(L.load16(r3, h), xv)
        h += 16
      }
      var s0 = treeSum(a0), s1 = treeSum(a1), s2 = treeSum(a2), s3 = treeSum(a3)
      while h < k {
        let xh = x[h]
        s0 += L.load(r0, h) * xh; s1 += L.load(r1, h) * xh; s2 += L.load(r2, h) * xh; s3 += L.load(r3, h) * xh
        h += 1
      }
      store(s0, c + j, accumulate)
      store(s1, c + j + 1, accumulate)
      store(s2, c + j + 2, accumulate)
      store(s3, c + j + 3, accumulate)
      j += 4
    }
  }

  /// Asks for the cache line at `p` in each of four rows `rowBytes` apart.
  @inline(__always)
  static func prefetchFourRows(_ p: UnsafeRawPointer, rowBytes: Int) {
    moe_prefetch(p)
    moe_prefetch(p + rowBytes)
    moe_prefetch(p + 2 * rowBytes)
    moe_prefetch(p + 3 * rowBytes)
  }

  /// vectorFourRows for bf16 rows (see vectorRowsBF16 for `even` and `odd`).
  static func vectorFourRowsBF16(rows: Int, k: Int, even: UnsafePointer<Float>, odd: UnsafePointer<Float>,
                                 x: UnsafePointer<Float>, w: WeightMatrix, c: UnsafeMutablePointer<Float>,
                                 accumulate: Bool) {
    let k32 = k & ~31, half = k32 / 2, rowBytes = 2 * w.ld
    let highMask = SIMD16<UInt32>(repeating: 0xFFFF_0000)
    @inline(__always) func finish(_ sum: Vec16, _ j: Int) {
      finishRowBF16(sum, j, k: k, x: x, w: w, c: c, accumulate: accumulate)
    }
    var j = 0
    while j < rows {
      let r0 = UnsafeRawPointer(w.bf16 + j * w.ld), r1 = r0 + rowBytes, r2 = r1 + rowBytes, r3 = r2 + rowBytes
      let ahead = r0 + 8 * rowBytes
      var a0 = Vec16(), a1 = Vec16(), a2 = Vec16(), a3 = Vec16()
      var m = 0
      while m < half {
        let offset = 4 * m
        prefetchFourRows(ahead + offset, rowBytes: rowBytes)
        let ev = load16(even + m), od = load16(odd + m)
        let w0 = r0.loadUnaligned(fromByteOffset: offset, as: SIMD16<UInt32>.self)
        let w1 = r1.loadUnaligned(fromByteOffset: offset, as: SIMD16<UInt32>.self)
        let w2 = r2.loadUnaligned(fromByteOffset: offset, as: SIMD16<UInt32>.self)
        let w3 = r3.loadUnaligned(fromByteOffset: offset, as: SIMD16<UInt32>.self)
        a0 = a0.addingProduct(unsafeBitCast(w0 &<< 16, to: Vec16.self), ev)
          .addingProduct(unsafeBitCast(w0 & highMask, to: Vec16.self), od)
        a1 = a1.addingProduct(unsafeBitCast(w1 &<< 16, to: Vec16.self), ev)
          .addingProduct(unsafeBitCast(w1 & highMask, to: Vec16.self), od)
        a2 = a2.addingProduct(unsafeBitCast(w2 &<< 16, to: Vec16.self), ev)
          .addingProduct(unsafeBitCast(w2 & highMask, to: Vec16.self), od)
        a3 = a3.addingProduct(unsafeBitCast(w3 &<< 16, to: Vec16.self), ev)
          .addingProduct(unsafeBitCast(w3 & highMask, to: Vec16.self), od)
        m += 16
      }
      finish(a0, j)
      finish(a1, j + 1)
      finish(a2, j + 2)
      finish(a3, j + 3)
      j += 4
    }
  }

  /// bf16 rows without widening instructions: a 32-bit word holds elements
  /// 2m (low half) and 2m+1 (high half), so `word << 16` and `word & 0xFFFF0000`
  /// are those two elements as f32. x is split once into even and odd halves
  /// (in `scratch`, n * k floats) to match.
  static func xWtBF16(n: Int, rows: Int, k: Int, x: UnsafePointer<Float>, ldx: Int, w: WeightMatrix,
                      c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool,
                      scratch: UnsafeMutablePointer<Float>, walk: RowStreaming = Kernels.rowStreaming) {
    let k32 = k & ~31, half = k32 / 2
    for i in 0..<n {
      let src = x + i * ldx, even = scratch + i * k32, odd = even + half
      for m in 0..<half {
        even[m] = src[2 * m]
        odd[m] = src[2 * m + 1]
      }
    }
    if n == 1 {
      let j0 = walk == .hinted ? rows & ~3 : 0
      vectorFourRowsBF16(rows: j0, k: k, even: scratch, odd: scratch + half, x: x, w: w, c: c, accumulate: accumulate)
      vectorRowsBF16(rows: j0..<rows, k: k, even: scratch, odd: scratch + half, x: x, w: w, c: c,
                     accumulate: accumulate)
      return
    }
    let highMask = SIMD16<UInt32>(repeating: 0xFFFF_0000)
    for j in 0..<rows {
      let row = UnsafeRawPointer(w.bf16 + j * w.ld)
      let tailRow = w.bf16 + j * w.ld
      var i = 0
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

  /// c[j] (+)= w[j, :] . x for one token, bf16 rows j in `rows`, one row
  /// after another as in `run` (one sequential stream), four multiply-add
  /// chains a row. `even` and `odd` hold x's elements 2m and 2m + 1 for the
  /// first k & ~31 inputs (see xWtBF16).
  static func vectorRowsBF16(rows: Range<Int>, k: Int, even: UnsafePointer<Float>, odd: UnsafePointer<Float>,
                             x: UnsafePointer<Float>, w: WeightMatrix, c: UnsafeMutablePointer<Float>,
                             accumulate: Bool) {
    let k32 = k & ~31, half = k32 / 2
    let highMask = SIMD16<UInt32>(repeating: 0xFFFF_0000)
    for j in rows {
      let row = UnsafeRawPointer(w.bf16 + j * w.ld)
      var a0 = Vec16(), a1 = Vec16(), a2 = Vec16(), a3 = Vec16()
      var m = 0
      while m + 32 <= half {
        let w0 = row.loadUnaligned(fromByteOffset: 4 * m, as: SIMD16<UInt32>.self)
        let w1 = row.loadUnaligned(fromByteOffset: 4 * m + 64, as: SIMD16<UInt32>.self)
        a0 = a0.addingProduct(unsafeBitCast(w0 &<< 16, to: Vec16.self), load16(even + m))
        a1 = a1.addingProduct(unsafeBitCast(w0 & highMask, to: Vec16.self), load16(odd + m))
        a2 = a2.addingProduct(unsafeBitCast(w1 &<< 16, to: Vec16.self), load16(even + m + 16))
        a3 = a3.addingProduct(unsafeBitCast(w1 & highMask, to: Vec16.self), load16(odd + m + 16))
        m += 32
      }
      if m < half {
        let w0 = row.loadUnaligned(fromByteOffset: 4 * m, as: SIMD16<UInt32>.self)
        a0 = a0.addingProduct(unsafeBitCast(w0 &<< 16, to: Vec16.self), load16(even + m))
        a1 = a1.addingProduct(unsafeBitCast(w0 & highMask, to: Vec16.self), load16(odd + m))
      }
      finishRowBF16((a0 + a1) + (a2 + a3), j, k: k, x: x, w: w, c: c, accumulate: accumulate)
    }
  }

  /// Stores c[j] (+)= the lanes of `sum` (bf16 row j's products over its
  /// first k & ~31 elements), reduced by treeSum, plus the elements left.
  @inline(__always)
  static func finishRowBF16(_ sum: Vec16, _ j: Int, k: Int, x: UnsafePointer<Float>, w: WeightMatrix,
                            c: UnsafeMutablePointer<Float>, accumulate: Bool) {
    var s = treeSum(sum)
    let tail = w.bf16 + j * w.ld
    for h in (k & ~31)..<k { s += bf16ToFloat(tail[h]) * x[h] }
    store(s, c + j, accumulate)
  }

  /// c[n, cols] (+)= a[n, k] * w[k, cols] for few tokens: each weight row is read
  /// once and added, scaled, to every token's output (bf16 rows widened into `row`).
  package static func aW(n: Int, cols: Int, k: Int, a: UnsafePointer<Float>, lda: Int, w: WeightMatrix,
                         c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool, row: UnsafeMutablePointer<Float>) {
    if !accumulate { for i in 0..<n { (c + i * ldc).update(repeating: 0, count: cols) } }
    for t in 0..<k {
      let src: UnsafePointer<Float>
      if w.dtype.isQuantized {
        QuantizedGEMM.row(w, t, cols: w.ld, into: row)
        src = UnsafePointer(row)
      } else if w.dtype == .bf16 {
        widenBF16(w.bf16 + t * w.ld, row, count: cols)
        src = UnsafePointer(row)
      } else {
        src = w.f32 + t * w.ld
      }
      for i in 0..<n { axpy(a[i * lda + t], src, c + i * ldc, cols) }
    }
  }

  @inlinable @inline(always)
  package static func store(_ v: Float, _ p: UnsafeMutablePointer<Float>, _ accumulate: Bool) {
    if accumulate { p.pointee += v } else { p.pointee = v }
  }
}

public protocol RowLoader {
  static func load16(_ row: UnsafeRawPointer, _ i: Int) -> Vec16
  static func load(_ row: UnsafeRawPointer, _ i: Int) -> Float
}

public enum F32Rows: RowLoader {
  @inlinable @inline(always) public static func load16(_ row: UnsafeRawPointer, _ i: Int) -> Vec16 {
    row.loadUnaligned(fromByteOffset: i * 4, as: Vec16.self)
  }
  @inlinable @inline(always) public static func load(_ row: UnsafeRawPointer, _ i: Int) -> Float {
    row.loadUnaligned(fromByteOffset: i * 4, as: Float.self)
  }
}

public enum BF16Rows: RowLoader {
  @inlinable @inline(always) public static func load16(_ row: UnsafeRawPointer, _ i: Int) -> Vec16 {
    loadBF16x16(row.assumingMemoryBound(to: UInt16.self) + i)
  }
  @inlinable @inline(always) public static func load(_ row: UnsafeRawPointer, _ i: Int) -> Float {
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
  public static func productForTesting(n: Int, rows: Int, k: Int, x: [Float], w: WeightMatrix,
                                       walk: RowStreaming = Kernels.rowStreaming) -> [Float] {
    var c = [Float](repeating: 0, count: n * rows)
    let scratch = UnsafeMutablePointer<Float>.allocate(capacity: 64 * max(k, 1))
    defer { scratch.deallocate() }
    x.withUnsafeBufferPointer { xp in
      c.withUnsafeMutableBufferPointer { cp in
        xWt(n: n, rows: rows, k: k, x: xp.baseAddress ?? UnsafePointer(scratch), ldx: k, w: w,
            c: cp.baseAddress ?? scratch, ldc: rows, accumulate: false,
            scratch: scratch, scratchFloats: 64 * max(k, 1), walk: walk)
      }
    }
    return c
  }
}

// MARK: - Fused products

extension Kernels {
  /// p, and q when given (same m, n, k), in one blocked loop that packs a shared
  /// operand once, calling `epilogue(row0, rows, col0, cols)` on each finished
  /// strip of C while it is in cache (PackedGEMM.run(_:_:_:epilogue:)). On the
  /// OpenBLAS path: the products one after the other, then the epilogue over all of C.
  package static func gemmFused(_ p: GEMMProblem, _ q: GEMMProblem?, path: KernelPath = active.path,
                                bf16: BF16Kernels? = nil, epilogue: (Int, Int, Int, Int) -> Void) {
    if let table = path.table(for: p.compute, bf16: bf16) {
      table.gemmFused(p, q, epilogue)
      return
    }
    gemm(p, path: path)
    if let q { gemm(q, path: path, bf16: bf16) }
    if p.m > 0 && p.n > 0 { epilogue(0, p.m, 0, p.n) }
  }
}

extension GEMM {
  /// c1 = x w1^T and c2 = x w2^T (each [n, rows], leading dimension ldc; w1 and
  /// w2 of one dtype and ld), x packed once, then `epilogue(row0, rows, col0,
  /// cols)` on each finished block of both (all of them at once for few tokens).
  package static func xWtPair(n: Int, rows: Int, k: Int, x: UnsafePointer<Float>, ldx: Int,
                              w1: WeightMatrix, c1: UnsafeMutablePointer<Float>,
                              w2: WeightMatrix, c2: UnsafeMutablePointer<Float>, ldc: Int,
                              scratch: UnsafeMutablePointer<Float>, scratchFloats: Int,
                              compute: ComputePrecision = .f32, callTokens: Int? = nil,
                              epilogue: (Int, Int, Int, Int) -> Void) {
    guard n > 0, rows > 0 else { return }
    if (n <= smallGEMMTokenLimit && compute == .f32) || w1.dtype.isQuantized {
      xWt(n: n, rows: rows, k: k, x: x, ldx: ldx, w: w1, c: c1, ldc: ldc, accumulate: false,
          scratch: scratch, scratchFloats: scratchFloats, compute: compute, callTokens: callTokens)
      xWt(n: n, rows: rows, k: k, x: x, ldx: ldx, w: w2, c: c2, ldc: ldc, accumulate: false,
          scratch: scratch, scratchFloats: scratchFloats, compute: compute, callTokens: callTokens)
      epilogue(0, n, 0, rows)
      return
    }
    let a = MatrixOperand(base: x, ld: ldx)
    func problem(_ w: WeightMatrix, _ c: UnsafeMutablePointer<Float>) -> GEMMProblem {
      GEMMProblem(m: n, n: rows, k: k, a: a,
                  b: w.operand(transposed: true),
                  c: c, ldc: ldc, accumulate: false, compute: compute)
    }
    Kernels.gemmFused(problem(w1, c1), problem(w2, c2), epilogue: epilogue)
  }

  /// c[n, rows] = x w^T as `xWt` (not accumulating), then `epilogue(row0, rows,
  /// col0, cols)` on each finished block of c (all of it at once for few tokens).
  package static func xWt(n: Int, rows: Int, k: Int, x: UnsafePointer<Float>, ldx: Int,
                          w: WeightMatrix, c: UnsafeMutablePointer<Float>, ldc: Int,
                          scratch: UnsafeMutablePointer<Float>, scratchFloats: Int,
                          compute: ComputePrecision = .f32, callTokens: Int? = nil,
                          epilogue: (Int, Int, Int, Int) -> Void) {
    guard n > 0, rows > 0 else { return }
    if (n <= smallGEMMTokenLimit && compute == .f32) || w.dtype.isQuantized {
      xWt(n: n, rows: rows, k: k, x: x, ldx: ldx, w: w, c: c, ldc: ldc, accumulate: false,
          scratch: scratch, scratchFloats: scratchFloats, compute: compute, callTokens: callTokens)
      epilogue(0, n, 0, rows)
      return
    }
    Kernels.gemmFused(GEMMProblem(m: n, n: rows, k: k, a: MatrixOperand(base: x, ld: ldx),
                                  b: w.operand(transposed: true),
                                  c: c, ldc: ldc, accumulate: false, compute: compute), nil, epilogue: epilogue)
  }

  /// c[n, cols] = a w as `aW` (not accumulating), then `epilogue(row0, rows,
  /// col0, cols)` on each finished block of c (all of it at once for few tokens).
  package static func aW(n: Int, cols: Int, k: Int, a: UnsafePointer<Float>, lda: Int,
                         w: WeightMatrix, c: UnsafeMutablePointer<Float>, ldc: Int,
                         compute: ComputePrecision = .f32,
                         epilogue: (Int, Int, Int, Int) -> Void) {
    guard n > 0, cols > 0 else { return }
    if (n <= smallGEMMTokenLimit && compute == .f32) || w.dtype.isQuantized {
      aW(n: n, cols: cols, k: k, a: a, lda: lda, w: w, c: c, ldc: ldc, accumulate: false, compute: compute)
      epilogue(0, n, 0, cols)
      return
    }
    Kernels.gemmFused(GEMMProblem(m: n, n: cols, k: k, a: MatrixOperand(base: a, ld: lda),
                                  b: w.operand(),
                                  c: c, ldc: ldc, accumulate: false, compute: compute), nil, epilogue: epilogue)
  }

  /// c1[m, cols] += a1[n, m]^T b and c2[m, cols] += a2[n, m]^T b (a1 and a2 with
  /// leading dimension lda, c1 and c2 with ldc): b packed once for both.
  package static func atBPair(n: Int, m: Int, cols: Int, a1: UnsafePointer<Float>, a2: UnsafePointer<Float>, lda: Int,
                              b: UnsafePointer<Float>, ldb: Int,
                              c1: UnsafeMutablePointer<Float>, c2: UnsafeMutablePointer<Float>, ldc: Int,
                              compute: ComputePrecision = .f32) {
    guard n > 0, m > 0, cols > 0 else { return }
    let bOperand = MatrixOperand(base: b, ld: ldb)
    func problem(_ a: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>) -> GEMMProblem {
      GEMMProblem(m: m, n: cols, k: n, a: MatrixOperand(base: a, ld: lda, transposed: true), b: bOperand,
                  c: c, ldc: ldc, accumulate: true, compute: compute)
    }
    Kernels.gemmFused(problem(a1, c1), problem(a2, c2)) { _, _, _, _ in }
  }

  /// c[n, cols] (ldc) = a1[n, k] w1[k, cols] + a2[n, k] w2[k, cols] (a1 and a2
  /// with leading dimension lda; w1 and w2 of one dtype and ld): both products
  /// add into each block of c while it is in cache.
  package static func aWSum(n: Int, cols: Int, k: Int, a1: UnsafePointer<Float>, w1: WeightMatrix,
                            a2: UnsafePointer<Float>, w2: WeightMatrix, lda: Int, c: UnsafeMutablePointer<Float>, ldc: Int,
                            compute: ComputePrecision = .f32) {
    guard n > 0, cols > 0 else { return }
    if (n <= smallGEMMTokenLimit && compute == .f32) || w1.dtype.isQuantized {
      aW(n: n, cols: cols, k: k, a: a1, lda: lda, w: w1, c: c, ldc: ldc, accumulate: false, compute: compute)
      aW(n: n, cols: cols, k: k, a: a2, lda: lda, w: w2, c: c, ldc: ldc, accumulate: true, compute: compute)
      return
    }
    func problem(_ a: UnsafePointer<Float>, _ w: WeightMatrix, accumulate: Bool) -> GEMMProblem {
      GEMMProblem(m: n, n: cols, k: k, a: MatrixOperand(base: a, ld: lda),
                  b: w.operand(), c: c, ldc: ldc,
                  accumulate: accumulate, compute: compute)
    }
    Kernels.gemmFused(problem(a1, w1, accumulate: false), problem(a2, w2, accumulate: true)) { _, _, _, _ in }
  }
}
