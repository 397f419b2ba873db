// "Upcycle, train an MoE from scratch, or keep training the dense model?"
// answered with three laws (dense, MoE from scratch, upcycled) for a dense
// model of N1 parameters already trained on D1 tokens and a budget of tokens
// or training FLOPs, and the D2 beyond which upcycling stops beating the MoE
// trained from scratch. Intervals come from bootstrap refits of the laws.

import MoESupport
#if canImport(Glibc)
import Glibc
#endif

extension LawForm: NamedCase {
  public var caseName: String { name }
}

/// The three laws of a plan.
public struct LawSet: Sendable, Equatable {
  public var dense: ScalingLaw
  public var moe: ScalingLaw
  public var upcycled: ScalingLaw

  public init(dense: ScalingLaw, moe: ScalingLaw, upcycled: ScalingLaw) {
    self.dense = dense
    self.moe = moe
    self.upcycled = upcycled
  }

  /// The published laws of Liew, Kato and Takase (2025), Table 2.
  public static let liew2025 = LawSet(dense: ScalingLaw.liew2025Dense, moe: ScalingLaw.liew2025MoE,
                                      upcycled: ScalingLaw.liew2025Upcycled)

  package func validate() throws {
    try dense.validate("the dense law")
    try moe.validate("the MoE law")
    try upcycled.validate("the upcycled law")
    guard !dense.form.upcycles, !moe.form.upcycles else {
      throw MoEError.invalid("the dense and MoE laws must be data or data-params laws (of D and N), not upcycle laws")
    }
    guard upcycled.form.upcycles else {
      throw MoEError.invalid("the upcycled law must be an upcycle or upcycle-params law (of D1 and D2)")
    }
  }
}

/// A law file: the three laws and, optionally, bootstrap refits of each.
/// JSON: {"dense": LAW, "moe": LAW, "upcycled": LAW, "bootstrap": [{"dense": LAW, "moe": LAW, "upcycled": LAW}, ...]}
/// with LAW = {"form": "data-params", "E": .., "A": .., "alpha": .., "alpha2": .., "alpha3": .., "B": .., "beta": ..}
/// (coefficients the form does not use may be left out).
public struct LawFile: Sendable {
  public var laws: LawSet
  public var bootstrap: [LawSet]

  public init(laws: LawSet, bootstrap: [LawSet] = []) {
    self.laws = laws
    self.bootstrap = bootstrap
  }

  public init(path: String) throws {
    let json = try JSONParser.parse(try FileSystem.readAll(path, limit: 64 << 20), what: "law file '\(path)'")
    func set(_ j: JSON, _ where_: String) throws -> LawSet {
      func law(_ key: String) throws -> ScalingLaw {
        guard let v = j[key] else { throw MoEError.format("\(where_) has no \"\(key)\" law") }
        return try ScalingLaw(json: v, what: "\(where_) \"\(key)\"")
      }
      return LawSet(dense: try law("dense"), moe: try law("moe"), upcycled: try law("upcycled"))
    }
    laws = try set(json, "law file '\(path)'")
    bootstrap = try (json["bootstrap"]?.arrayValue ?? []).enumerated().map { try set($1, "bootstrap set \($0) of '\(path)'") }
  }

  public var json: JSON {
    func set(_ s: LawSet) -> JSON { .object([("dense", s.dense.json), ("moe", s.moe.json), ("upcycled", s.upcycled.json)]) }
    var pairs = set(laws).objectValue!
    if !bootstrap.isEmpty { pairs.append(("bootstrap", .array(bootstrap.map(set)))) }
    return .object(pairs)
  }
}

extension ScalingLaw {
  /// {"form": .., "E": .., "A": .., "alpha": .., ...} (the coefficients of the form).
  public var json: JSON {
    var pairs: [(String, JSON)] = [("form", .string(form.name))]
    for (name, value) in zip(form.coefficientNames, vector) { pairs.append((name, .float(value))) }
    return .object(pairs)
  }

  public init(json: JSON, what: String) throws {
    guard let formName = json["form"]?.stringValue, let form = LawForm(caseName: formName) else {
      throw MoEError.format("\(what) needs \"form\": one of \(LawForm.allCases.map(\.name).joined(separator: ", "))")
    }
    let v = try form.coefficientNames.map { name -> Double in
      guard let x = json[name]?.doubleValue else { throw MoEError.format("\(what) has no number \"\(name)\"") }
      return x
    }
    self.init(form: form, vector: v)
    try validate(what)
  }
}

/// The question.
public struct PlanQuestion: Sendable {
  /// D1: tokens the dense model was trained on.
  public var denseTokens = 0.0
  /// The budget in tokens (each option trains this many more), or 0 to use FLOPs.
  public var budgetTokens = 0.0
  /// The budget in training FLOPs (6 N per token: N1 for dense, the active
  /// parameters for MoE), used when budgetTokens is 0.
  public var budgetFLOPs = 0.0
  /// N1: the dense model's parameters.
  public var denseParams = 0.0
  /// Parameters an MoE token runs through (FLOPs budgets only).
  public var activeParams = 0.0

  public init() {}
}

/// One option's tokens and predicted loss (with an interval from the bootstrap).
public struct PlanOption: Sendable {
  public var tokens: Double
  public var loss: Double
  public var low = Double.nan
  public var high = Double.nan
}

public struct PlanAnswer: Sendable {
  public enum Choice: Int32, Sendable { case upcycle = 0, scratch, dense }
  public var upcycled: PlanOption
  public var scratch: PlanOption
  /// The same MoE from scratch given the dense model's pretraining as well
  /// (D1 + the budget's tokens; FLOPs: 6 N1 D1 + the budget): the comparison
  /// that counts the sunk cost.
  public var scratchAll: PlanOption
  /// The dense model trained on `tokens` more (D1 + tokens in all).
  public var dense: PlanOption
  public var best: Choice
  /// The D2 beyond which the MoE trained from scratch reaches a loss at or
  /// below the upcycled one: 0 when upcycling is not ahead even at the
  /// smallest D2 searched (1e3 tokens), infinity when it stays ahead up to 1e18.
  public var breakEvenTokens: Double
  public var breakEvenLow = Double.nan
  public var breakEvenHigh = Double.nan
  /// Bootstrap law sets behind the intervals.
  public var bootstrap = 0
  /// The upcycled law's exponent of D2 at this D1 (alpha2 - alpha3 ln D1).
  public var d2Exponent: Double
}

public enum ScalingPlanner {
  public static func answer(_ q: PlanQuestion, laws: LawSet, bootstrap: [LawSet] = []) throws -> PlanAnswer {
    try laws.validate()
    for (i, s) in bootstrap.enumerated() {
      do { try s.validate() } catch let e as MoEError { throw MoEError(e.kind, "bootstrap set \(i): \(e.message)") }
    }
    func positive(_ v: Double, _ what: String) throws {
      guard v.isFinite, v > 0 else { throw MoEError.invalid("\(what) is \(v); it must be positive and finite") }
    }
    try positive(q.denseTokens, "the dense model's tokens (D1)")
    try positive(q.denseParams, "the dense model's parameters (N1)")
    let moeTokens: Double, denseMore: Double, allTokens: Double
    if q.budgetTokens != 0 {
      try positive(q.budgetTokens, "the token budget")
      guard q.budgetFLOPs == 0 else { throw MoEError.invalid("give a token budget or a FLOPs budget, not both") }
      moeTokens = q.budgetTokens
      denseMore = q.budgetTokens
      allTokens = q.denseTokens + q.budgetTokens
    } else {
      try positive(q.budgetFLOPs, "the budget (tokens or FLOPs)")
      try positive(q.activeParams, "a FLOPs budget needs the MoE's active parameters, which")
      moeTokens = q.budgetFLOPs / (6 * q.activeParams)
      denseMore = q.budgetFLOPs / (6 * q.denseParams)
      allTokens = (6 * q.denseParams * q.denseTokens + q.budgetFLOPs) / (6 * q.activeParams)
    }
    let d1 = q.denseTokens, n1 = q.denseParams
    func losses(_ s: LawSet) -> (up: Double, scratch: Double, all: Double, dense: Double, breakEven: Double) {
      let up = s.upcycled.predict(ScalingPoint(tokens: moeTokens, denseTokens: d1, params: n1, loss: 0))
      let scratch = s.moe.predict(ScalingPoint(tokens: moeTokens, params: n1, loss: 0))
      let all = s.moe.predict(ScalingPoint(tokens: allTokens, params: n1, loss: 0))
      let dense = s.dense.predict(ScalingPoint(tokens: d1 + denseMore, params: n1, loss: 0))
      return (up, scratch, all, dense, breakEven(s, d1: d1, n1: n1))
    }
    let main = losses(laws)
    let all = [main.up, main.scratch, main.dense]
    guard all.allSatisfy(\.isFinite), main.all.isFinite else { throw MoEError.invalid("a law predicts a loss that is not finite here") }
    let bestIndex = all.indices.min { all[$0] < all[$1] }!
    var answer = PlanAnswer(upcycled: PlanOption(tokens: moeTokens, loss: main.up),
                            scratch: PlanOption(tokens: moeTokens, loss: main.scratch),
                            scratchAll: PlanOption(tokens: allTokens, loss: main.all),
                            dense: PlanOption(tokens: denseMore, loss: main.dense),
                            best: PlanAnswer.Choice(rawValue: Int32(bestIndex))!, breakEvenTokens: main.breakEven,
                            d2Exponent: laws.upcycled.alpha2 - laws.upcycled.alpha3 * log(d1))
    if !bootstrap.isEmpty {
      let b = bootstrap.map(losses)
      func interval(_ values: [Double]) -> (Double, Double) {
        (ScalingFitter.percentile(values, 0.025), ScalingFitter.percentile(values, 0.975))
      }
      (answer.upcycled.low, answer.upcycled.high) = interval(b.map(\.up))
      (answer.scratch.low, answer.scratch.high) = interval(b.map(\.scratch))
      (answer.scratchAll.low, answer.scratchAll.high) = interval(b.map(\.all))
      (answer.dense.low, answer.dense.high) = interval(b.map(\.dense))
      (answer.breakEvenLow, answer.breakEvenHigh) = interval(b.map(\.breakEven))
      answer.bootstrap = bootstrap.count
    }
    return answer
  }

  /// The smallest D2 (searched on a log grid from 1e3 to 1e18 tokens, then
  /// bisected) at which the MoE from scratch is no worse than the upcycled MoE.
  package static func breakEven(_ s: LawSet, d1: Double, n1: Double) -> Double {
    func gap(_ d2: Double) -> Double {
      s.moe.predict(ScalingPoint(tokens: d2, params: n1, loss: 0))
        - s.upcycled.predict(ScalingPoint(tokens: d2, denseTokens: d1, params: n1, loss: 0))
    }
    var lo = 3.0 * log(10.0)
    guard gap(exp(lo)) > 0 else { return 0 }
    let steps = 300, top = 18 * log(10.0)
    for i in 1...steps {
      let hi = 3 * log(10.0) + (top - 3 * log(10.0)) * Double(i) / Double(steps)
      if !(gap(exp(hi)) > 0) {
        var a = lo, b = hi
        for _ in 0..<100 {
          let mid = (a + b) / 2
          if gap(exp(mid)) > 0 { a = mid } else { b = mid }
        }
        return exp(b)
      }
      lo = hi
    }
    return .infinity
  }
}
