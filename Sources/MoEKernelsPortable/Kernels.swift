// Any x86-64 (SSE2): 4-float xmm vectors, multiply then add (no FMA). The shared kernels of MoEKernelCode, instantiated for
// this module's target CPU (see Package.swift).

import MoEKernelCode

public enum PortableKernels: KernelISA {
  public typealias V = SIMD4<Float>
  @inline(__always) public static func madd(_ acc: V, _ a: V, _ b: V) -> V {
    acc + a * b
  }
  public static var kc: Int { 256 }
  public static var mc: Int { 96 }

  public static let table = makeTable(name: "portable", fused: false)
}
