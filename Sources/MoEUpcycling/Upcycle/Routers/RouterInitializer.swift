// The registry of router initializers: each is one type (one file in this
// directory) holding its validation, the rows it writes and what the output
// config records about it. ExpertBuilder asks the registry and never switches
// on the initializer.

import MoESupport

/// How one MoE layer's router rows start.
public protocol RouterInitializer: Sendable {
  /// The initializer's name (the C enum's name and the config's "router_init").
  var name: String { get }
  /// Whether it reads calibration statistics.
  func needsStatistics(_ o: UpcycleOptions) -> Bool
  /// Checks the options.
  func validate(_ o: UpcycleOptions) throws
  /// The layer's distinct router rows [groups, H] (granular repeats each row
  /// for the G experts of a virtual expert).
  func rows(_ b: ExpertBuilder, groups: Int) throws -> [Float]
  /// The initializer's fields in the output config's `moeupcycle` block.
  func record(_ o: UpcycleOptions) -> [(String, JSON)]
}

extension RouterInitializer {
  public func needsStatistics(_ o: UpcycleOptions) -> Bool { false }
  public func validate(_ o: UpcycleOptions) throws {}
  public func record(_ o: UpcycleOptions) -> [(String, JSON)] { [] }
}

extension UpcycleOptions.RouterInit {
  /// The initializer's implementation.
  public var rule: any RouterInitializer {
    switch self {
    case .normal: return NormalRouter()
    case .uniform: return UniformRouter()
    case .zeros: return ZerosRouter()
    case .kmeans: return KMeansRouter()
    case .prompts: return PromptRouter()
    }
  }
}

/// Helpers of the data-derived routers.
package enum RouterRows {
  /// Rows [g, H] minus their mean row. Adding one vector to every row adds
  /// the same logit to every expert, which no routing sees; removing it
  /// leaves only what tells experts apart.
  static func centered(_ rows: [Float], count g: Int, width H: Int) -> [Float] {
    var out = rows
    for i in 0..<H {
      var s = 0.0
      for r in 0..<g { s += Double(rows[r * H + i]) }
      let mean = Float(s / Double(g))
      for r in 0..<g { out[r * H + i] -= mean }
    }
    return out
  }

  /// Rows scaled so that over the sample inputs x [n, H] the standard
  /// deviation of a token's logits across experts averages `spread`
  /// (root mean square over tokens). Unchanged when the logits do not vary.
  static func scaled(_ rows: [Float], count g: Int, width H: Int, samples x: [Float], spread: Double) -> [Float] {
    let n = x.count / max(1, H)
    guard n > 0, g > 1 else { return rows }
    var total = 0.0
    for t in 0..<n {
      var z = [Double](repeating: 0, count: g)
      for r in 0..<g {
        var s = 0.0
        for i in 0..<H { s += Double(x[t * H + i]) * Double(rows[r * H + i]) }
        z[r] = s
      }
      let mean = z.reduce(0, +) / Double(g)
      total += z.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(g)
    }
    let current = (total / Double(n)).squareRoot()
    guard current > 0, current.isFinite else { return rows }
    let factor = Float(spread / current)
    return rows.map { $0 * factor }
  }

  static func validateSpread(_ o: UpcycleOptions) throws {
    guard o.routerSpread.isFinite && o.routerSpread > 0 else {
      throw MoEError.invalid("router spread must be finite and > 0 (got \(o.routerSpread))")
    }
  }
}
