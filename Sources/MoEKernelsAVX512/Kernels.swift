// AVX-512 (F): 16-float zmm vectors, FMA. The shared kernels of MoEKernelCode, instantiated for
// this module's target CPU (see Package.swift).

import MoEKernelCode

public enum AVX512Kernels: KernelISA {
  public typealias V = SIMD16<Float>
  @inline(__always) public static func madd(_ acc: V, _ a: V, _ b: V) -> V {
    acc.addingProduct(a, b)
  }
  public static var kc: Int { 256 }
  public static var mc: Int { 144 }

  /// bf16 compute on AVX512-BF16 where the CPU runs it.
  public static let table = makeTable(name: "avx512", fused: true)
  /// The same kernels with bf16 compute always on the fallback (for tests).
  public static let bf16FallbackTable = makeTable(name: "avx512", fused: true, bf16Native: false)
}
