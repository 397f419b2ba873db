// In-place access to a layer's owned f32 weights and their gradients, row by
// row in a fixed order, for optimizers.

import MoESupport
import MoEFormats

extension MoELayer {
  /// Calls body(weight, expert, weightRow, gradientRow, count) for every row
  /// of every owned f32 tensor selected by `routerOnly`, in a fixed order
  /// (router, then per shard and slice: gate, up, down rows; then the
  /// shared-expert gate). `expert` is -1 for the router and shared tensors.
  /// Throws when weights are bf16 or borrowed (they cannot be updated here);
  /// experts mapped from a checkpoint file are copied into owned memory first.
  public func forEachParameterRow(routerOnly: Bool,
                                  _ body: (LayerWeight, Int, UnsafeMutablePointer<Float>, UnsafePointer<Float>, Int) -> Void) throws {
    let E = config.experts, H = config.hidden, F = config.ffn, Fs = config.sharedFFN
    let gRouter = try gradient(.router).pointer
    for e in 0..<E { body(.router, -1, router.pointer + e * H, gRouter + e * H, H) }
    if routerOnly { return }
    try ownExperts()
    guard config.storage == .f32, !expertsBorrowed else {
      throw MoEError.unsupported("training needs owned f32 expert weights (this layer's are \(expertsBorrowed ? "borrowed" : config.storage.name))")
    }
    let gGate = try gradient(.gate).pointer, gUp = try gradient(.up).pointer, gDown = try gradient(.down).pointer
    let gSharedGate = Fs > 0 ? try gradient(.sharedGate).pointer : gGate
    let gSharedUp = Fs > 0 ? try gradient(.sharedUp).pointer : gUp
    let gSharedDown = Fs > 0 ? try gradient(.sharedDown).pointer : gDown
    for views in shardSlices {
      for v in views {
        let e = v.expert, f0 = v.ffn.lowerBound, fn = v.ffn.count
        let routed = e < E
        let Fe = routed ? F : Fs
        let gateGrad = (routed ? gGate + e * F * H : gSharedGate) + f0 * H
        let upGrad = (routed ? gUp + e * F * H : gSharedUp) + f0 * H
        let downGrad = (routed ? gDown + e * H * F : gSharedDown) + f0
        let gate = UnsafeMutablePointer(mutating: v.gate.f32), up = UnsafeMutablePointer(mutating: v.up.f32)
        let down = UnsafeMutablePointer(mutating: v.down.f32)
        let expert = routed ? e : -1
        for r in 0..<fn { body(routed ? .gate : .sharedGate, expert, gate + r * H, gateGrad + r * H, H) }
        for r in 0..<fn { body(routed ? .up : .sharedUp, expert, up + r * H, upGrad + r * H, H) }
        for r in 0..<H { body(routed ? .down : .sharedDown, expert, down + r * v.down.ld, downGrad + r * Fe, fn) }
      }
    }
    if Fs > 0 { body(.sharedExpertGate, -1, sharedExpertGate.pointer, try gradient(.sharedExpertGate).pointer, H) }
  }
}
