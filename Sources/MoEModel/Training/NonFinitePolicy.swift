import MoESupport

/// What a training step does when its loss or gradient norm is NaN or
/// infinite. Raw values equal the ABI's `moe_nonfinite`.
public enum NonFinitePolicy: Int32, Sendable, CaseIterable {
  /// The step throws `.nonFinite`, naming the loss or the first tensor whose
  /// gradient is not finite; weights, optimizer moments and the step counter stay as they were.
  case error = 0
  /// The step changes no weight or moment but counts as taken (the step
  /// counter and the schedule advance); its `StepStats.skipped` is true.
  case skip = 1
}

extension NonFinitePolicy: NamedCase {
  public var caseName: String {
    switch self {
    case .error: return "error"
    case .skip: return "skip"
    }
  }
}
