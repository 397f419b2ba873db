@testable import MoESupport
@testable import MoEScaling
#if canImport(Glibc)
import Glibc
#endif
import Testing

/// Scaling laws in the core: the fit's objective gradient against finite
/// differences, the percentile rule, and the planner's break-even search.
@Suite struct ScalingTests {
  /// The analytic gradient of the Huber objective equals central differences, for every form.
  @Test(arguments: LawForm.allCases)
  func objectiveGradientMatchesFiniteDifferences(form: LawForm) throws {
    let truth = ScalingLaw(form: form, e: 1.5, a: 40, alpha: 0.3, alpha2: 0.2, alpha3: 0.004, b: 30, beta: 0.25)
    var points: [ScalingPoint] = []
    var rng = Rng(seed: 5)
    for i in 0..<12 {
      var p = ScalingPoint(tokens: 1e6 * pow(3, Double(i % 4)), denseTokens: 1e7 * pow(2, Double(i / 4)),
                           params: 1e6 * pow(5, Double(i % 3)), loss: 0)
      p.loss = truth.predict(p) * exp(0.05 * (rng.uniform() - 0.5))
      points.append(p)
    }
    // Delta large enough that some residuals are quadratic and some linear.
    let problem = ScalingFitter.Problem(points: points, form: form, delta: 0.01)
    var theta = [log(1.2), log(30.0), 0.25]
    if form.upcycles { theta += [0.15, 0.002] }
    if form.hasParams { theta += [log(25.0), 0.2] }
    var g = [Double](repeating: 0, count: theta.count), scratch = g
    _ = problem.value(theta, gradient: &g)
    for i in theta.indices {
      let h = 1e-6
      var up = theta, down = theta
      up[i] += h
      down[i] -= h
      let numeric = (problem.value(up, gradient: &scratch) - problem.value(down, gradient: &scratch)) / (2 * h)
      #expect(abs(numeric - g[i]) <= 1e-6 * max(1, abs(g[i])), "coefficient \(i): \(g[i]) vs \(numeric)")
    }
  }

  @Test func percentilesInterpolateLinearly() {
    #expect(ScalingFitter.percentile([4, 1, 3, 2], 0) == 1)
    #expect(ScalingFitter.percentile([4, 1, 3, 2], 1) == 4)
    #expect(ScalingFitter.percentile([4, 1, 3, 2], 0.5) == 2.5)
    #expect(ScalingFitter.percentile([7], 0.975) == 7)
  }

  @Test func breakEvenIsWhereTheScratchLawCatchesUp() throws {
    let laws = LawSet.liew2025
    let d1 = 1e11, n1 = 1e9
    let b = ScalingPlanner.breakEven(laws, d1: d1, n1: n1)
    #expect(b.isFinite && b > 1e3)
    let gap = { (d2: Double) in
      laws.moe.predict(ScalingPoint(tokens: d2, params: n1, loss: 0))
        - laws.upcycled.predict(ScalingPoint(tokens: d2, denseTokens: d1, params: n1, loss: 0))
    }
    #expect(gap(b * 0.999) > 0 && gap(b * 1.001) <= 0)
    // A scratch law that is always better: upcycling is never ahead.
    var better = laws
    better.moe.a = 0
    #expect(ScalingPlanner.breakEven(better, d1: d1, n1: n1) == 0)
  }
}
