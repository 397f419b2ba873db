// The words a checkpoint's MoE layers are described in, shared by the readers,
// the writers, the layer and the C ABI: a SwiGLU projection, a layer's weights
// and how its router logits become expert choices.

import MoESupport

/// The three projections of a SwiGLU FFN.
public enum Projection: Int, Sendable, CaseIterable {
  case gate = 0, up = 1, down = 2

  /// The MoE layer's weight of this projection of an expert.
  public var layerWeight: LayerWeight {
    switch self { case .gate: return .gate; case .up: return .up; case .down: return .down }
  }
}

/// The tensors of a layer, as the C ABI names them.
public enum LayerWeight: Int32, Sendable, CaseIterable {
  case router = 0          // [E, H]
  case gate = 1            // [E, F, H]
  case up = 2              // [E, F, H]
  case down = 3            // [E, H, F]
  case sharedGate = 4      // [Fs, H]
  case sharedUp = 5        // [Fs, H]
  case sharedDown = 6      // [H, Fs]
  case sharedExpertGate = 7 // [H]

  public var name: String {
    switch self {
    case .router: return "router"
    case .gate: return "gate"
    case .up: return "up"
    case .down: return "down"
    case .sharedGate: return "shared_gate"
    case .sharedUp: return "shared_up"
    case .sharedDown: return "shared_down"
    case .sharedExpertGate: return "shared_expert_gate"
    }
  }

  package var isRoutedExpert: Bool { self == .gate || self == .up || self == .down }
  package var isShared: Bool { rawValue >= 4 }
}

/// How router logits become expert choices and combine weights.
public enum RoutingMode: Int32, Sendable, CaseIterable {
  /// p = softmax(logits); top-k of p; weights p / sum of the k (Mixtral).
  case softmaxTopKRenorm = 0
  /// p = softmax(logits); top-k of p; weights p (Qwen2-MoE, norm_topk_prob=false).
  case softmaxTopK = 1
  /// top-k of logits; weights softmax over the k logits (equal values to renorm).
  case topKSoftmax = 2
  /// s = sigmoid(logits); top-k of s; weights s.
  case sigmoidTopK = 3
  /// s = sigmoid(logits); top-k of s; weights s / sum of the k (DeepSeek-V3).
  case sigmoidTopKRenorm = 4

  package var usesSigmoid: Bool { self == .sigmoidTopK || self == .sigmoidTopKRenorm }
}

extension RoutingMode: NamedCase {
  public var caseName: String {
    switch self {
    case .softmaxTopKRenorm: return "softmax-topk-renorm"
    case .softmaxTopK: return "softmax-topk"
    case .topKSoftmax: return "topk-softmax"
    case .sigmoidTopK: return "sigmoid-topk"
    case .sigmoidTopKRenorm: return "sigmoid-topk-renorm"
    }
  }
}

extension LayerWeight: NamedCase {
  public var caseName: String { normalizedCaseName(name) }
}
