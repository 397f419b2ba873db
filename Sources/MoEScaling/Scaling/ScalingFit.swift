// Fitting a scaling law to observed losses as the scaling-law literature does
// (Hoffmann et al. 2022): minimize the Huber loss of the log-loss residuals,
// log predicted - log observed, with L-BFGS from every point of a grid of
// starting values, and keep the best optimum. E, A and B are fitted through
// their logarithms (they stay positive); exponents are free. Confidence
// intervals come from refitting bootstrap resamples of the points (seeded),
// each started from the full fit's best optima.

import MoESupport
#if canImport(Glibc)
import Glibc
#endif

public struct ScalingFitOptions: Sendable {
  /// Huber threshold on the log residual (Hoffmann et al. use 1e-3).
  public var huberDelta = 1e-3
  /// Bootstrap resamples for the intervals (0 = none).
  public var bootstrap = 0
  /// Seed of the resampling.
  public var seed: UInt64 = 0
  /// L-BFGS iterations per start.
  public var maxIterations = 500

  public init() {}
}

public struct ScalingFit: Sendable {
  public var law: ScalingLaw
  /// Mean Huber loss of the log residuals at the optimum.
  public var objective: Double
  /// Root mean square of log predicted - log observed.
  public var rmsLogError: Double
  /// Starting points tried.
  public var starts: Int
  /// The bootstrap refits (empty without bootstrap).
  public var bootstrap: [ScalingLaw]

  /// Percentile `q` (0...1) of each coefficient over the bootstrap refits,
  /// as a law of the same form; nil without bootstrap.
  public func percentile(_ q: Double) -> ScalingLaw? {
    guard !bootstrap.isEmpty else { return nil }
    let vectors = bootstrap.map(\.vector)
    let v = (0..<law.vector.count).map { i in ScalingFitter.percentile(vectors.map { $0[i] }, q) }
    return ScalingLaw(form: law.form, vector: v)
  }
}

public enum ScalingFitter {
  /// Fits a law of `form` to `points`.
  public static func fit(_ points: [ScalingPoint], form: LawForm, options: ScalingFitOptions = ScalingFitOptions()) throws -> ScalingFit {
    let k = form.coefficientNames.count
    guard points.count > k else {
      throw MoEError.invalid("a \(form.name) law has \(k) coefficients; fitting it needs more than \(k) points (got \(points.count))")
    }
    guard points.count <= 1 << 20 else { throw MoEError.invalid("\(points.count) points are too many to fit (at most 1048576)") }
    let probe = ScalingLaw(form: form, e: 0, a: 0, alpha: 0)
    for (i, p) in points.enumerated() { try probe.check(p, index: i, needsLoss: true) }
    guard options.huberDelta.isFinite, options.huberDelta > 0 else {
      throw MoEError.invalid("the Huber delta must be positive and finite (got \(options.huberDelta))")
    }
    guard options.bootstrap >= 0, options.bootstrap <= 100_000 else {
      throw MoEError.invalid("bootstrap resamples must be in 0...100000 (got \(options.bootstrap))")
    }
    guard options.maxIterations >= 1, options.maxIterations <= 1_000_000 else {
      throw MoEError.invalid("iterations must be in 1...1000000 (got \(options.maxIterations))")
    }
    let problem = Problem(points: points, form: form, delta: options.huberDelta)
    let starts = grid(form: form, minLoss: points.map(\.loss).min()!)
    var results: [(theta: [Double], f: Double)] = []
    for s in starts {
      results.append(minimize(problem, from: s, iterations: options.maxIterations))
    }
    results.sort { $0.f < $1.f }
    guard let best = results.first, best.f.isFinite else {
      throw MoEError.invalid("no start reached a finite fit of the \(form.name) law; the points may not follow it")
    }
    // The bootstrap starts from the best distinct optima of the full fit.
    var seeds: [[Double]] = []
    for r in results where r.f.isFinite && seeds.count < 8 {
      if !seeds.contains(where: { zip($0, r.theta).allSatisfy { abs($0 - $1) < 1e-6 * max(1, abs($1)) } }) {
        seeds.append(r.theta)
      }
    }
    var rng = Rng(seed: options.seed, stream: [0x626F_6F74])
    var refits: [ScalingLaw] = []
    for _ in 0..<options.bootstrap {
      let sample = (0..<points.count).map { _ in points[rng.below(points.count)] }
      let p = Problem(points: sample, form: form, delta: options.huberDelta)
      let r = seeds.map { minimize(p, from: $0, iterations: options.maxIterations) }.min { $0.f < $1.f }!
      refits.append(problem.law(r.theta))
    }
    let law = problem.law(best.theta)
    let residuals = points.map { log(law.predict($0)) - log($0.loss) }
    let rms = (residuals.reduce(0) { $0 + $1 * $1 } / Double(points.count)).squareRoot()
    return ScalingFit(law: law, objective: best.f, rmsLogError: rms, starts: starts.count, bootstrap: refits)
  }

  /// The q-quantile (linear interpolation) of `values`.
  package static func percentile(_ values: [Double], _ q: Double) -> Double {
    let s = values.sorted()
    let x = q * Double(s.count - 1)
    let i = Int(x.rounded(.down)), f = x - Double(i)
    return i + 1 < s.count ? s[i] * (1 - f) + s[i + 1] * f : s[i]
  }

  // MARK: - Objective

  /// The fitting problem in the parameters theta = [ln E, ln A, alpha,
  /// (alpha2, alpha3), (ln B, beta)].
  package struct Problem {
    package let form: LawForm
    package let delta: Double
    package let l1: [Double]   // ln D, or ln D1 (upcycle forms)
    package let l2: [Double]   // ln D2 (upcycle forms)
    let ln: [Double]   // ln N (params forms)
    let ly: [Double]   // ln loss

    package init(points: [ScalingPoint], form: LawForm, delta: Double) {
      self.form = form
      self.delta = delta
      l1 = points.map { log(form.upcycles ? $0.denseTokens : $0.tokens) }
      l2 = points.map { form.upcycles ? log($0.tokens) : 0 }
      ln = points.map { form.hasParams ? log($0.params) : 0 }
      ly = points.map { log($0.loss) }
    }

    package func law(_ t: [Double]) -> ScalingLaw {
      var v = t
      v[0] = exp(t[0])
      v[1] = exp(t[1])
      if form.hasParams { v[v.count - 2] = exp(t[t.count - 2]) }
      return ScalingLaw(form: form, vector: v)
    }

    /// Mean Huber loss of the log residuals and its gradient in theta.
    package func value(_ t: [Double], gradient g: inout [Double]) -> Double {
      for i in g.indices { g[i] = 0 }
      let E = exp(t[0])
      let up = form.upcycles, params = form.hasParams
      let ib = t.count - 2
      var f = 0.0
      for i in ly.indices {
        var dataExp = t[1] - t[2] * l1[i]
        if up { dataExp += (-t[3] + t[4] * l1[i]) * l2[i] }
        let tA = exp(dataExp)
        let tB = params ? exp(t[ib] - t[ib + 1] * ln[i]) : 0
        let pred = E + tA + tB
        guard pred.isFinite, pred > 0 else { return .infinity }
        let r = log(pred) - ly[i]
        let h: Double, dh: Double
        if abs(r) <= delta {
          h = 0.5 * r * r
          dh = r
        } else {
          h = delta * (abs(r) - 0.5 * delta)
          dh = r > 0 ? delta : -delta
        }
        f += h
        let w = dh / pred
        g[0] += w * E
        g[1] += w * tA
        g[2] -= w * tA * l1[i]
        if up {
          g[3] -= w * tA * l2[i]
          g[4] += w * tA * l1[i] * l2[i]
        }
        if params {
          g[ib] += w * tB
          g[ib + 1] -= w * tB * ln[i]
        }
      }
      let n = Double(ly.count)
      for i in g.indices { g[i] /= n }
      return f / n
    }
  }

  /// Starting points: E below the smallest loss, a range of scales and exponents.
  static func grid(form: LawForm, minLoss: Double) -> [[Double]] {
    var out: [[Double]] = []
    let eValues = [0.05, 0.4, 0.7, 0.9].map { log($0 * minLoss) }
    let aValues = [0.0, 2.5, 5.0, 10.0, 15.0]
    let alphaValues = [0.05, 0.2, 0.5, 1.0]
    let alpha2Values = form.upcycles ? [0.05, 0.3] : [0]
    let alpha3Values = form.upcycles ? [-0.005, 0.0, 0.005] : [0]
    let bValues = form.hasParams ? [0.0, 5.0, 10.0] : [0]
    let betaValues = form.hasParams ? [0.1, 0.4] : [0]
    for e in eValues {
      for a in aValues {
        for alpha in alphaValues {
          for a2 in alpha2Values {
            for a3 in alpha3Values {
              for b in bValues {
                for beta in betaValues {
                  var t = [e, a, alpha]
                  if form.upcycles { t += [a2, a3] }
                  if form.hasParams { t += [b, beta] }
                  out.append(t)
                }
              }
            }
          }
        }
      }
    }
    return out
  }

  // MARK: - L-BFGS

  /// L-BFGS (10 pairs) with a backtracking Armijo line search; returns the
  /// best point reached and its objective.
  static func minimize(_ p: Problem, from start: [Double], iterations: Int) -> (theta: [Double], f: Double) {
    let n = start.count, m = 10
    var x = start
    var g = [Double](repeating: 0, count: n)
    var f = p.value(x, gradient: &g)
    guard f.isFinite else { return (x, .infinity) }
    var sList: [[Double]] = [], yList: [[Double]] = [], rhoList: [Double] = []
    var gNew = g
    for it in 0..<iterations {
      let gnorm = g.reduce(0) { max($0, abs($1)) }
      if gnorm < 1e-14 { break }
      // Two-loop recursion: d = -H g.
      var q = g
      var alphas = [Double](repeating: 0, count: sList.count)
      for i in stride(from: sList.count - 1, through: 0, by: -1) {
        alphas[i] = rhoList[i] * dot(sList[i], q)
        for j in 0..<n { q[j] -= alphas[i] * yList[i][j] }
      }
      if let s = sList.last, let y = yList.last {
        let gamma = dot(s, y) / max(dot(y, y), 1e-300)
        for j in 0..<n { q[j] *= gamma }
      } else {
        let scale = 1 / max(g.reduce(0) { $0 + $1 * $1 }.squareRoot(), 1e-300)
        for j in 0..<n { q[j] *= min(scale, 1) }
      }
      for i in 0..<sList.count {
        let beta = rhoList[i] * dot(yList[i], q)
        for j in 0..<n { q[j] += sList[i][j] * (alphas[i] - beta) }
      }
      var d = q.map { -$0 }
      var slope = dot(g, d)
      if !(slope < 0) {
        // Not a descent direction: restart from steepest descent.
        sList.removeAll(); yList.removeAll(); rhoList.removeAll()
        d = g.map { -$0 }
        slope = dot(g, d)
      }
      var step = 1.0
      var xNew = x, fNew = Double.infinity
      var accepted = false
      for _ in 0..<60 {
        for j in 0..<n { xNew[j] = x[j] + step * d[j] }
        fNew = p.value(xNew, gradient: &gNew)
        if fNew.isFinite && fNew <= f + 1e-4 * step * slope {
          accepted = true
          break
        }
        step *= 0.5
      }
      guard accepted else { break }
      let s = (0..<n).map { xNew[$0] - x[$0] }
      let y = (0..<n).map { gNew[$0] - g[$0] }
      let sy = dot(s, y)
      let done = abs(f - fNew) <= 1e-16 * max(1, abs(f)) && it > 0
      x = xNew
      g = gNew
      f = fNew
      if sy > 1e-300 {
        sList.append(s); yList.append(y); rhoList.append(1 / sy)
        if sList.count > m { sList.removeFirst(); yList.removeFirst(); rhoList.removeFirst() }
      }
      if done { break }
    }
    return (x, f)
  }

  @inline(__always)
  static func dot(_ a: [Double], _ b: [Double]) -> Double {
    var s = 0.0
    for i in a.indices { s += a[i] * b[i] }
    return s
  }
}

extension LawForm {
  /// The form's name ("data", "data-params", "upcycle", "upcycle-params").
  public var name: String {
    switch self {
    case .data: return "data"
    case .dataParams: return "data-params"
    case .upcycle: return "upcycle"
    case .upcycleParams: return "upcycle-params"
    }
  }
}
