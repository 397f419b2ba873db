// Any x86-64 (SSE2): 4-float xmm vectors, multiply then add (no FMA). The shared kernels of MoEKernelCode, instantiated for
// this module's target CPU (see Package.swift).

import MoEKernelCode

public enum PortableKernels: KernelISA {
  public typealias V = SIMD4<Float>
  @inline(__always) public static func load(_ p: UnsafePointer<Float>) -> V {
    UnsafeRawPointer(p).loadUnaligned(as: V.self)
  }
  @inline(__always) public static func store(_ v: V, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: V.self)
  }
  @inline(__always) public static func madd(_ acc: V, _ a: V, _ b: V) -> V {
    acc + a * b
  }
  public static var kc: Int { 256 }
  public static var mc: Int { 96 }

  public static let table = KernelTable(
    name: "portable", width: 4, fused: false,
    gemm: { PackedGEMM.run(PortableKernels.self, $0) },
    fmaLoop: { FMALoop.run(PortableKernels.self, iterations: $0) })
}
