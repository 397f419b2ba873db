// Shape and behaviour of one Mixture-of-Experts feed-forward layer.

import MoEKernelCode
import MoESupport
import MoEFormats
import MoERuntime

public struct MoELayerConfig: Sendable, Equatable {
  /// Model width H.
  public var hidden: Int
  /// Intermediate size F of each routed expert.
  public var ffn: Int
  /// Routed experts E.
  public var experts: Int
  /// Experts per token K (expert choice: average experts per token).
  public var topK: Int
  public var routing: RoutingMode = .softmaxTopKRenorm
  /// See RoutingConfig.capacityFactor.
  public var capacityFactor: Float = 0
  public var expertChoice: Bool = false
  /// Intermediate size of a shared expert (0: none). Its output is scaled by
  /// sigmoid(x . w_gate) with a learned [H] vector (Qwen2-MoE).
  public var sharedFFN: Int = 0
  /// Storage of expert weights: .f32, .bf16, or GGML's .q8_0, .q4_0, .q4_1
  /// blocks (inference only; H, F and the shared F multiples of 32). The
  /// router and the shared-expert gate are always f32.
  public var storage: DType = .f32
  /// Precision of the expert products, forward and backward: .f32, or .bf16
  /// (operands rounded to bf16, f32 sums; PackedGEMM.swift). The router, the
  /// shared-expert gate and every element-wise step stay f32.
  public var compute: DType = .f32
  /// NUMA placement of owned expert weights; nil = the runtime's default.
  public var placement: PlacementPolicy? = nil
  /// Switch-style multiplicative jitter on the router input in training
  /// forwards: x * U(1 - jitter, 1 + jitter). 0 = off.
  public var jitter: Float = 0
  /// Seed of the jitter noise (with the layer's noise step).
  public var seed: UInt64 = 0
  /// Coefficient of the Switch load-balancing loss added by backward.
  public var balanceCoef: Float = 0.01
  /// Coefficient of the router z-loss added by backward.
  public var zCoef: Float = 0.001

  public init(hidden: Int, ffn: Int, experts: Int, topK: Int) {
    self.hidden = hidden
    self.ffn = ffn
    self.experts = experts
    self.topK = topK
  }

  public var routingConfig: RoutingConfig {
    RoutingConfig(experts: experts, topK: topK, mode: routing,
                  capacityFactor: capacityFactor, expertChoice: expertChoice)
  }

  /// The expert products' precision, as the kernels take it.
  var expertCompute: ComputePrecision { compute == .bf16 ? .bf16 : .f32 }

  /// Experts including the shared one (which has index `experts`).
  var allExperts: Int { experts + (sharedFFN > 0 ? 1 : 0) }

  package func ffn(ofExpert e: Int) -> Int { e < experts ? ffn : sharedFFN }

  /// Largest dimension accepted for H, F and the shared F.
  public static let maxDimension = 1 << 20

  public func validate() throws {
    func check(_ v: Int, _ name: String, _ range: ClosedRange<Int>) throws {
      guard range.contains(v) else { throw MoEError.invalid("\(name) is \(v); it must be in \(range.lowerBound)...\(range.upperBound)") }
    }
    try check(hidden, "hidden_size", 1...Self.maxDimension)
    try check(ffn, "moe_intermediate_size", 1...Self.maxDimension)
    try check(experts, "num_experts", 1...4096)
    try check(topK, "top_k", 1...experts)
    try check(sharedFFN, "shared_expert_intermediate_size", 0...Self.maxDimension)
    guard capacityFactor.isFinite, capacityFactor >= 0, capacityFactor <= 1000 else {
      throw MoEError.invalid("capacity_factor is \(capacityFactor); it must be 0 (dropless) or in (0, 1000]")
    }
    guard storage != .f16 else {
      throw MoEError.unsupported("storage dtype \(storage.name) is not supported for layer weights; use f32, bf16, q8_0, q4_0 or q4_1")
    }
    if storage.isQuantized {
      for (v, name) in [(hidden, "hidden_size"), (ffn, "moe_intermediate_size"), (sharedFFN, "shared_expert_intermediate_size")]
      where v % storage.blockElements != 0 {
        throw MoEError.unsupported("\(storage.name) storage holds rows in blocks of \(storage.blockElements) weights, but \(name) is \(v); use f32 or bf16")
      }
    }
    guard compute == .f32 || compute == .bf16 else {
      throw MoEError.unsupported("compute dtype \(compute.name) is not supported for the expert products; use f32 or bf16")
    }
    guard jitter.isFinite, jitter >= 0, jitter < 1 else { throw MoEError.invalid("jitter is \(jitter); it must be in [0, 1)") }
    guard balanceCoef.isFinite, balanceCoef >= 0 else { throw MoEError.invalid("aux_loss_coef is \(balanceCoef); it must be >= 0") }
    guard zCoef.isFinite, zCoef >= 0 else { throw MoEError.invalid("z_loss_coef is \(zCoef); it must be >= 0") }
    let expertWeights = try checkedProduct([3, experts, ffn, hidden], what: "expert weights")
    let sharedWeights = try checkedProduct([3, sharedFFN, hidden], what: "shared expert weights")
    // f32 weights and f32 gradients of the same size.
    let bytes = (expertWeights + sharedWeights).multipliedReportingOverflow(by: 8)
    guard !bytes.overflow, bytes.partialValue <= 1 << 42 else {
      throw MoEError(.outOfMemory, "the layer's weights and gradients would take more than 4 TiB (E=\(experts) F=\(ffn) H=\(hidden))")
    }
  }
}
