// The report of a study: every run's curve, the comparisons at each D1 and
// D2, fits of the laws (data laws for the dense and the from-scratch runs, an
// upcycle law per method) with bootstrap intervals, and the claims of the
// upcycling papers checked against the numbers. Written as report.json,
// report.md and one law file per method (laws-METHOD.json, for `plan`).

import MoEModel
import MoESupport
import MoEUpcycling
#if canImport(Glibc)
import Glibc
#endif

package struct StudyReport {
  let study: Study
  let denseFLOPsPerToken: Double
  let moeFLOPsPerToken: Double
  let denseParameters: Double
  package let activeParameters: Double

  /// The loss of a curve at `step` (every step asked for was evaluated).
  package static func loss(_ curve: [StudyPoint], _ step: Int) -> Double? { curve.first { $0.step == step }?.loss }

  package func write() throws -> String {
    let r = study.recipe
    let ratio = moeFLOPsPerToken / denseFLOPsPerToken
    func curve(_ name: String) throws -> [StudyPoint] {
      guard let c = try study.finishedCurve(name) else { throw MoEError(.internal, "run '\(name)' has no result") }
      return c
    }
    let dense = try curve("dense")
    let scratch = r.scratch ? try curve("scratch") : []
    var upcycled: [String: [Int: [StudyPoint]]] = [:]
    var continued: [Int: [StudyPoint]] = [:]
    for d1 in r.denseSteps {
      for m in r.methods { upcycled[m.name, default: [:]][d1] = try curve("up-\(m.name)-d1-\(d1)") }
      if r.denseContinued { continued[d1] = try curve("dense-d1-\(d1)") }
    }
    var runs: [(String, JSON)] = [("dense", .array(dense.map(\.json)))]
    if r.scratch { runs.append(("scratch", .array(scratch.map(\.json)))) }
    for d1 in r.denseSteps {
      for m in r.methods { runs.append(("up-\(m.name)-d1-\(d1)", .array(upcycled[m.name]![d1]!.map(\.json)))) }
      if let c = continued[d1] { runs.append(("dense-d1-\(d1)", .array(c.map(\.json)))) }
    }

    // Comparisons at each D1 and D2.
    var rows: [JSON] = []
    var md = ""
    let methodNames = r.methods.map(\.name)
    md += "| D1 tokens | dense at D1 | D2 tokens | " + methodNames.map { "upcycled \($0)" }.joined(separator: " | ")
    md += " | dense + D2 (tokens) | dense + D2 (FLOPs) | scratch, D2 | scratch, D1 + D2 |\n"
    md += "|---|---|---|" + String(repeating: "---|", count: methodNames.count) + "---|---|---|---|\n"
    func fmt(_ v: Double?) -> String { v.map { cFormat("%.4f", $0) } ?? "–" }
    func num(_ v: Double?) -> JSON { v.map { .float($0) } ?? .null }
    for d1 in r.denseSteps {
      let atD1 = Self.loss(dense, d1)
      for d2 in [0] + r.upcycledSteps {
        let ups = methodNames.map { Self.loss(upcycled[$0]![d1]!, d2) }
        let contTokens = continued[d1].flatMap { Self.loss($0, d2) }
        let contFLOPs = continued[d1].flatMap { Self.loss($0, Int((Double(d2) * ratio).rounded())) }
        let scratchD2 = d2 > 0 && r.scratch ? Self.loss(scratch, d2) : nil
        let scratchAll = d2 > 0 && r.scratch ? Self.loss(scratch, d1 + d2) : nil
        rows.append(.object([
          ("d1_tokens", .float(r.tokens(d1))), ("d2_tokens", .float(r.tokens(d2))), ("dense_at_d1", num(atD1)),
          ("upcycled", .object(zip(methodNames, ups).map { ($0, num($1)) })),
          ("dense_continued_tokens", num(contTokens)), ("dense_continued_flops", num(contFLOPs)),
          ("scratch_d2", num(scratchD2)), ("scratch_d1_d2", num(scratchAll)),
        ]))
        md += "| \(cFormat("%.3g", r.tokens(d1))) | \(fmt(atD1)) | \(cFormat("%.3g", r.tokens(d2))) | "
        md += ups.map(fmt).joined(separator: " | ")
        md += " | \(fmt(contTokens)) | \(fmt(contFLOPs)) | \(fmt(scratchD2)) | \(fmt(scratchAll)) |\n"
      }
    }

    // Fits.
    var fitOptions = ScalingFitOptions()
    fitOptions.bootstrap = r.bootstrap
    fitOptions.seed = r.seed
    func fit(_ points: [ScalingPoint], _ form: LawForm) -> (JSON, ScalingFit?) {
      do {
        let f = try ScalingFitter.fit(points, form: form, options: fitOptions)
        var pairs: [(String, JSON)] = [("law", f.law.json), ("rms_log_error", .float(f.rmsLogError)),
                                       ("points", .int(points.count))]
        if let lo = f.percentile(0.025), let hi = f.percentile(0.975) {
          pairs.append(("low", lo.json))
          pairs.append(("high", hi.json))
        }
        return (.object(pairs), f)
      } catch let e as MoEError {
        return (.object([("error", .string(e.message)), ("points", .int(points.count))]), nil)
      } catch {
        return (.object([("error", .string("\(error)"))]), nil)
      }
    }
    let densePoints = dense.filter { $0.step > 0 }.map { ScalingPoint(tokens: $0.tokens, loss: $0.loss) }
    let (denseFitJSON, denseFit) = fit(densePoints, .data)
    let scratchPoints = scratch.filter { $0.step > 0 }.map { ScalingPoint(tokens: $0.tokens, loss: $0.loss) }
    let (scratchFitJSON, scratchFit) = r.scratch ? fit(scratchPoints, .data) : (.null, nil)
    var fits: [(String, JSON)] = [("dense", denseFitJSON), ("scratch", scratchFitJSON)]
    var upFits: [String: ScalingFit] = [:]
    for m in r.methods {
      let points = r.denseSteps.flatMap { d1 in
        upcycled[m.name]![d1]!.filter { $0.step > 0 }.map {
          ScalingPoint(tokens: $0.tokens, denseTokens: r.tokens(d1), loss: $0.loss)
        }
      }
      let (j, f) = fit(points, .upcycle)
      fits.append(("upcycled-\(m.name)", j))
      if let f { upFits[m.name] = f }
    }
    // A law file per method for `moeupcycle plan` (forms without N: one model size).
    var lawFiles: [JSON] = []
    if let denseFit, let scratchFit {
      for m in r.methods {
        guard let up = upFits[m.name] else { continue }
        let n = min(denseFit.bootstrap.count, scratchFit.bootstrap.count, up.bootstrap.count)
        let file = LawFile(laws: LawSet(dense: denseFit.law, moe: scratchFit.law, upcycled: up.law),
                           bootstrap: (0..<n).map { LawSet(dense: denseFit.bootstrap[$0], moe: scratchFit.bootstrap[$0],
                                                           upcycled: up.bootstrap[$0]) })
        let name = "laws-\(m.name).json"
        try FileSystem.replaceText(file.json.serialized(indent: 1) + "\n", at: FileSystem.join(study.out, name))
        lawFiles.append(.string(name))
      }
    }

    // The claims, checked against the numbers.
    var claims: [(String, JSON)] = []
    var claimText = ""
    func claim(_ key: String, _ reproduced: Bool?, _ text: String) {
      let verdict = reproduced.map { $0 ? "reproduced" : "not reproduced" } ?? "not measured"
      claims.append((key, .object([("verdict", .string(verdict)), ("detail", .string(text))])))
      claimText += "- **\(key.split(separator: "_").joined(separator: " "))**: \(verdict). \(text)\n"
    }
    let copies = r.methods.filter { $0.options.method == .copy }
    if let c = copies.first {
      let gaps = r.denseSteps.compactMap { d1 -> Double? in
        guard let a = Self.loss(upcycled[c.name]![d1]!, 0), let b = Self.loss(dense, d1) else { return nil }
        return abs(a - b)
      }
      let worst = gaps.max() ?? .nan
      claim("copy_starts_at_the_dense_loss", gaps.isEmpty ? nil : worst < 0.01,
            "Largest |loss after upcycling − dense loss at D1| over the D1 grid: \(cFormat("%.2g", worst)) nats (method \(c.name)).")
    }
    for m in methodNames where r.denseContinued {
      var wins = 0, cells = 0, winsFLOPs = 0, cellsFLOPs = 0
      for (i, row) in rows.enumerated() where r.tokens(r.upcycledSteps.first!) <= (row["d2_tokens"]?.doubleValue ?? 0) {
        _ = i
        guard let u = row["upcycled"]?[m]?.doubleValue else { continue }
        if let d = row["dense_continued_tokens"]?.doubleValue { cells += 1; if u < d { wins += 1 } }
        if let d = row["dense_continued_flops"]?.doubleValue { cellsFLOPs += 1; if u < d { winsFLOPs += 1 } }
      }
      claim("upcycled_\(m)_beats_dense_continued", cells == 0 ? nil : wins * 2 > cells,
            "The upcycled model (\(m)) has the lower held-out loss in \(wins) of \(cells) (D1, D2) cells at equal tokens and \(winsFLOPs) of \(cellsFLOPs) at equal training FLOPs (an MoE token costs \(cFormat("%.2f", ratio))x a dense one).")
    }
    if let c = copies.first, let d = r.methods.first(where: { $0.options.method == .drop }) {
      func meanGap(_ d2: Int) -> Double {
        let g = r.denseSteps.compactMap { d1 -> Double? in
          guard let a = Self.loss(upcycled[d.name]![d1]!, d2), let b = Self.loss(upcycled[c.name]![d1]!, d2) else { return nil }
          return a - b
        }
        return g.reduce(0, +) / Double(max(g.count, 1))
      }
      let early = meanGap(r.upcycledSteps.first!), late = meanGap(r.upcycledSteps.last!)
      claim("drop_catches_up_with_copy_as_d2_grows", late < early,
            "Mean loss of \(d.name) minus \(c.name) over the D1 grid: \(cFormat("%+.4f", early)) at the smallest D2, \(cFormat("%+.4f", late)) at the largest (Drop-Upcycling: worse at first, better with longer training).")
    }
    for m in r.methods {
      guard let f = upFits[m.name] else {
        claim("interaction_term_positive_\(m.name)", nil, "The upcycle law could not be fitted for \(m.name).")
        continue
      }
      let lo = f.percentile(0.025)?.alpha3, hi = f.percentile(0.975)?.alpha3
      let interval = lo.map { cFormat(" (95%% bootstrap interval %.3g to %.3g)", $0, hi!) } ?? ""
      claim("interaction_term_positive_\(m.name)", f.law.alpha3 > 0,
            "Fitted α3 = \(cFormat("%.3g", f.law.alpha3))\(interval): the benefit of D2 \(f.law.alpha3 > 0 ? "shrinks" : "does not shrink") as D1 grows.")
    }
    if r.scratch {
      for m in methodNames {
        var wins = 0, cells = 0
        for row in rows {
          guard let u = row["upcycled"]?[m]?.doubleValue, let s = row["scratch_d2"]?.doubleValue else { continue }
          cells += 1
          if u < s { wins += 1 }
        }
        claim("upcycled_\(m)_beats_scratch_at_equal_d2", cells == 0 ? nil : wins * 2 > cells,
              "Lower than the MoE trained from scratch on the same D2 tokens in \(wins) of \(cells) cells.")
      }
    }

    let report: JSON = .object([
      ("name", .string(r.name)), ("version", .string(moeupcycleVersion)),
      ("seed", .unsigned(r.seed)), ("tokens_per_step", .int(r.train.batch * r.train.seqLen)),
      ("dense_parameters", .float(denseParameters)), ("moe_active_parameters", .float(activeParameters)),
      ("dense_flops_per_token", .float(denseFLOPsPerToken)), ("moe_flops_per_token", .float(moeFLOPsPerToken)),
      ("dense_steps", .array(r.denseSteps.map { .int($0) })), ("upcycled_steps", .array(r.upcycledSteps.map { .int($0) })),
      ("methods", .array(methodNames.map { .string($0) })),
      ("runs", .object(runs)), ("comparisons", .array(rows)), ("fits", .object(fits)),
      ("law_files", .array(lawFiles)), ("claims", .object(claims)),
    ])
    let reportPath = FileSystem.join(study.out, "report.json")
    try FileSystem.replaceText(report.serialized(indent: 1) + "\n", at: reportPath)

    var text = "# Study \(r.name)\n\n"
    text += "Dense model: \(cFormat("%.3g", denseParameters)) parameters (hidden \(r.dense.hiddenSize), \(r.dense.numLayers) layers); "
    text += "MoE: \(r.experts) experts, top-\(r.topK), \(cFormat("%.3g", activeParameters)) active parameters; "
    text += "\(r.train.batch * r.train.seqLen) tokens per step; seed \(r.seed). Held-out loss in nats on the last "
    text += "\(Int(r.evalFraction * 100))% of the data (\(r.evalWindows) windows of \(r.train.seqLen + 1) tokens).\n\n"
    text += "## Held-out loss\n\n" + md + "\n"
    text += "## Fits\n\n| law | form | E | A | α | α2 | α3 | rms log error |\n|---|---|---|---|---|---|---|---|\n"
    for (name, j) in fits {
      guard let law = j["law"] else {
        text += "| \(name) | – | \(j["error"]?.stringValue ?? "not fitted") | | | | | |\n"
        continue
      }
      func c(_ k: String) -> String { law[k]?.doubleValue.map { cFormat("%.4g", $0) } ?? "–" }
      text += "| \(name) | \(law["form"]?.stringValue ?? "") | \(c("E")) | \(c("A")) | \(c("alpha")) | \(c("alpha2")) | \(c("alpha3")) | \(cFormat("%.3g", j["rms_log_error"]?.doubleValue ?? .nan)) |\n"
    }
    text += "\n## Claims\n\n" + claimText
    text += "\nPlots: `python3 scripts/plot_study.py \(study.out)` (held-out loss against tokens and FLOPs per method, fitted laws against the points).\n"
    try FileSystem.replaceText(text, at: FileSystem.join(study.out, "report.md"))
    return reportPath
  }
}
