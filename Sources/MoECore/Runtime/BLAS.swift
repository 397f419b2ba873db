#if canImport(Glibc)
import Glibc
#endif
import COpenBLAS

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
