// Scaling laws of held-out loss in tokens (and parameters), as data: a form
// and its coefficients, prediction, and the published fits of Liew, Kato and
// Takase (2025), "Scaling Laws for Upcycling Mixture-of-Experts Language
// Models" (docs/scaling.md states the forms, units and what is ambiguous).
//
// Forms (D, D1, D2 in tokens, N in parameters, loss in nats; ln = natural log):
//   data            L = E + A D^-alpha
//   data-params     L = E + A D^-alpha + B N^-beta
//   upcycle         L = E + A D1^-alpha D2^(-alpha2 + alpha3 ln D1)
//   upcycle-params  L = E + A D1^-alpha D2^(-alpha2 + alpha3 ln D1) + B N^-beta
// For the upcycle forms D1 is the dense model's pretraining tokens and D2 the
// upcycled model's training tokens; alpha3 > 0 makes the benefit of D2 shrink
// as D1 grows (the paper's interaction term).

import MoESupport
#if canImport(Glibc)
import Glibc
#endif

/// The functional form of a law. Raw values equal `moe_law_form`.
public enum LawForm: Int32, Sendable, CaseIterable {
  case data = 0, dataParams, upcycle, upcycleParams

  /// Whether the law has the interaction of dense and upcycled tokens (D1, D2).
  public var upcycles: Bool { self == .upcycle || self == .upcycleParams }
  /// Whether the law has the parameter term B N^-beta.
  public var hasParams: Bool { self == .dataParams || self == .upcycleParams }

  /// The coefficients this form fits, in `ScalingLaw.vector` order.
  var coefficientNames: [String] {
    var names = ["E", "A", "alpha"]
    if upcycles { names += ["alpha2", "alpha3"] }
    if hasParams { names += ["B", "beta"] }
    return names
  }
}

/// One observation: the loss reached with `tokens` (D, or D2 for the upcycle
/// forms), `denseTokens` (D1, upcycle forms) and `params` (N, params forms).
public struct ScalingPoint: Sendable, Equatable {
  public var tokens: Double
  public var denseTokens: Double
  public var params: Double
  public var loss: Double

  public init(tokens: Double, denseTokens: Double = 0, params: Double = 0, loss: Double) {
    self.tokens = tokens
    self.denseTokens = denseTokens
    self.params = params
    self.loss = loss
  }
}

/// A law: its form and coefficients (those the form does not use are 0).
public struct ScalingLaw: Sendable, Equatable {
  public var form: LawForm
  public var e: Double
  public var a: Double
  public var alpha: Double
  public var alpha2: Double = 0
  public var alpha3: Double = 0
  public var b: Double = 0
  public var beta: Double = 0

  public init(form: LawForm, e: Double, a: Double, alpha: Double, alpha2: Double = 0, alpha3: Double = 0,
              b: Double = 0, beta: Double = 0) {
    self.form = form
    self.e = e
    self.a = a
    self.alpha = alpha
    self.alpha2 = form.upcycles ? alpha2 : 0
    self.alpha3 = form.upcycles ? alpha3 : 0
    self.b = form.hasParams ? b : 0
    self.beta = form.hasParams ? beta : 0
  }

  /// The coefficients the form uses, in LawForm.coefficientNames order.
  public var vector: [Double] {
    var v = [e, a, alpha]
    if form.upcycles { v += [alpha2, alpha3] }
    if form.hasParams { v += [b, beta] }
    return v
  }

  /// The law of `form` with coefficients `v` (LawForm.coefficientNames order).
  public init(form: LawForm, vector v: [Double]) {
    var i = 3
    var alpha2 = 0.0, alpha3 = 0.0, b = 0.0, beta = 0.0
    if form.upcycles { alpha2 = v[i]; alpha3 = v[i + 1]; i += 2 }
    if form.hasParams { b = v[i]; beta = v[i + 1] }
    self.init(form: form, e: v[0], a: v[1], alpha: v[2], alpha2: alpha2, alpha3: alpha3, b: b, beta: beta)
  }

  /// Checks that every coefficient is finite and E, A (and B) are not negative.
  public func validate(_ what: String = "law") throws {
    guard vector.allSatisfy(\.isFinite) else { throw MoEError.invalid("\(what) has a coefficient that is not finite") }
    guard e >= 0, a >= 0, b >= 0 else {
      throw MoEError.invalid("\(what): E, A and B must not be negative (E \(e), A \(a), B \(b))")
    }
  }

  /// Checks that a point has what this form reads: positive tokens (and dense
  /// tokens, parameters where used), all finite.
  package func check(_ p: ScalingPoint, index: Int, needsLoss: Bool) throws {
    func positive(_ v: Double, _ name: String) throws {
      guard v.isFinite, v > 0 else {
        throw MoEError.invalid("point \(index): \(name) is \(v); it must be a positive, finite count")
      }
    }
    try positive(p.tokens, form.upcycles ? "tokens (D2)" : "tokens")
    if form.upcycles { try positive(p.denseTokens, "dense tokens (D1)") }
    if form.hasParams { try positive(p.params, "parameters (N)") }
    if needsLoss {
      guard p.loss.isFinite, p.loss > 0 else {
        throw MoEError.invalid("point \(index): loss is \(p.loss); it must be positive and finite")
      }
    }
  }

  /// The predicted loss at a point (its loss is not read).
  public func predict(_ p: ScalingPoint) -> Double {
    var data: Double
    if form.upcycles {
      let l1 = log(p.denseTokens), l2 = log(p.tokens)
      data = a * exp(-alpha * l1 + (-alpha2 + alpha3 * l1) * l2)
    } else {
      data = a * exp(-alpha * log(p.tokens))
    }
    if form.hasParams { data += b * exp(-beta * log(p.params)) }
    return e + data
  }

  /// Predictions for points, after checking them.
  public func predict(_ points: [ScalingPoint]) throws -> [Double] {
    try validate()
    for (i, p) in points.enumerated() { try check(p, index: i, needsLoss: false) }
    return points.map(predict)
  }

  // MARK: - Published fits

  /// Table 2 of Liew, Kato and Takase (2025): the joint laws (E shared) for a
  /// dense model, an MoE (8 experts, top-2) trained from scratch (fitted in the
  /// dense seed's size N1) and one upcycled from the dense model.
  public static let liew2025Dense = ScalingLaw(form: .dataParams, e: 0.165, a: 8.83, alpha: 0.088, b: 12.3, beta: 0.116)
  public static let liew2025MoE = ScalingLaw(form: .dataParams, e: 0.165, a: 32.0, alpha: 0.161, b: 7.05, beta: 0.080)
  public static let liew2025Upcycled = ScalingLaw(form: .upcycleParams, e: 0.165, a: 16.3, alpha: 0.043, alpha2: 0.085,
                                                  alpha3: 7.98e-4, b: 8.53, beta: 0.112)
  public static let presets: [(name: String, law: ScalingLaw)] = [
    ("liew2025-dense", liew2025Dense), ("liew2025-moe", liew2025MoE), ("liew2025-upcycled", liew2025Upcycled),
  ]

  public static func preset(named name: String) throws -> ScalingLaw {
    guard let law = presets.first(where: { $0.name == name })?.law else {
      throw MoEError.invalid("'\(name)' is not a scaling-law preset; use one of: \(presets.map(\.name).joined(separator: ", "))")
    }
    return law
  }
}
