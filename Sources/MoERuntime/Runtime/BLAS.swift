import MoESupport
#if canImport(Glibc)
import Glibc
#endif
import CMoECPU
import COpenBLAS
import MoEKernelCode

/// What the linked OpenBLAS is and how many threads it uses.
///
/// OpenBLAS's thread count is process-wide (0.3.21): calling a multi-threaded OpenBLAS
/// from the pool's workers oversubscribes the cores, so call sites either set it to 1
/// and give each worker its own tiles, or let OpenBLAS own all cores for one big GEMM.
public enum BLAS {
  /// The kernel family OpenBLAS selected at load time, e.g. "Haswell", "SkylakeX".
  public static var coreName: String {
    guard let name = openblas_get_corename() else { return "" }
    return String(cString: name)
  }

  /// Whether the selected kernel family uses AVX2 or wider (OpenBLAS falls back
  /// to SSE3 "Prescott" kernels for CPUs its version does not know).
  public static var hasAVX2Kernels: Bool {
    ["Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids", "Excavator"].contains(coreName)
  }

  /// OpenBLAS's build configuration string (version, threading model, target).
  public static var config: String {
    guard let text = openblas_get_config() else { return "" }
    return String(cString: text)
  }

  /// The number of threads OpenBLAS currently uses.
  public static var threads: Int { Int(openblas_get_num_threads()) }

  /// Sets OpenBLAS's process-wide thread count (values below 1 become 1).
  public static func setThreads(_ count: Int) {
    openblas_set_num_threads(Int32(clamping: max(1, count)))
  }

  /// `OPENBLAS_CORETYPE` as set in the environment (OpenBLAS reads it once, when it
  /// loads, to force a kernel family); nil when unset.
  public static var coreTypeEnvironment: String? {
    guard let value = getenv("OPENBLAS_CORETYPE") else { return nil }
    return String(cString: value)
  }
}

/// The OpenBLAS path: sgemm on the caller's thread (OpenBLAS kept single-threaded
/// by the runtime); bf16 operands are widened a block of columns at a time.
package enum OpenBLASGEMM {
  package static func run(_ p: GEMMProblem) {
    guard p.m > 0, p.n > 0 else { return }
    guard !p.a.bf16 else { PackedGEMM.reference(p); return }
    if !p.b.bf16 {
      sgemm(p, b: p.b.base.assumingMemoryBound(to: Float.self), ldb: p.b.ld, columns: 0..<p.n)
      return
    }
    // Widen blocks of B's columns (stored rows when transposed) into a thread buffer.
    let chunk = max(1, min(p.n, (1 << 20) / max(p.k, 1)))
    guard let buffer = moe_thread_buffer(2, chunk * max(p.k, 1)) else { PackedGEMM.reference(p); return }
    var j0 = 0
    while j0 < p.n {
      let cols = min(chunk, p.n - j0)
      let src = p.b.base.assumingMemoryBound(to: UInt16.self)
      if p.b.transposed {
        for j in 0..<cols { widenBF16(src + (j0 + j) * p.b.ld, buffer + j * p.k, count: p.k) }
        sgemm(p, b: buffer, ldb: p.k, columns: j0..<(j0 + cols))
      } else {
        for t in 0..<p.k { widenBF16(src + t * p.b.ld + j0, buffer + t * cols, count: cols) }
        sgemm(p, b: buffer, ldb: cols, columns: j0..<(j0 + cols))
      }
      j0 += cols
    }
  }

  /// c[:, columns] = a * b', where b' holds B's `columns` (from its first one).
  private static func sgemm(_ p: GEMMProblem, b: UnsafePointer<Float>, ldb: Int, columns: Range<Int>) {
    cblas_sgemm(CblasRowMajor, p.a.transposed ? CblasTrans : CblasNoTrans,
                p.b.transposed ? CblasTrans : CblasNoTrans,
                Int32(p.m), Int32(columns.count), Int32(p.k), 1,
                p.a.base.assumingMemoryBound(to: Float.self), Int32(p.a.ld),
                b, Int32(ldb), p.accumulate ? 1 : 0, p.c + columns.lowerBound, Int32(p.ldc))
  }
}
