/// What a training step does when its loss or gradient norm is NaN or
/// infinite. Raw values equal the ABI's `moe_nonfinite`.
public enum NonFinitePolicy: Int32, Sendable, CaseIterable {
  /// Stop the step with an error naming the loss or the first tensor whose
  /// gradient is not finite; nothing is updated.
  case error = 0
  /// Skip the step: no update; the step counter and the schedule advance.
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
