"""Every string a report shows, in English and Japanese: one table, keyed by name.

``t(key, lang, **fields)`` formats the entry. Each entry is ``(English, Japanese)`` with the same
``{fields}``; ``tests/bench/test_text.py`` checks that every English string has its Japanese
counterpart. Optimizer labels are the entries ``opt.<registry name>``.
"""

from __future__ import annotations

LANGS = ("en", "ja")

TEXT: dict[str, tuple[str, str]] = {
    # optimizers (plain names)
    "opt.adamw": ("AdamW", "AdamW"),
    "opt.sgd": ("SGD", "SGD"),
    "opt.shampoo": ("32-bit Shampoo", "32ビット Shampoo"),
    "opt.shampoo4bit": ("4-bit Shampoo", "4ビット Shampoo"),
    "opt.shampoo4bit-paper": ("4-bit Shampoo (Paper A)", "4ビット Shampoo(論文Aの設定)"),
    "opt.shampoo4bit-naive": ("naive 4-bit Shampoo", "単純4ビット Shampoo"),
    "opt.shampoo4bit-eigen": ("4-bit Shampoo (eigenvectors)", "4ビット Shampoo(固有ベクトル)"),
    "opt.shampoo4bit-cholesky": (
        "4-bit Shampoo without error feedback",
        "4ビット Shampoo(誤差補償なし)",
    ),
    "opt.shampoo4bit-auto": ("4/8-bit Shampoo (adaptive)", "4/8ビット Shampoo(適応)"),
    "opt.shampoo8bit": ("8-bit Shampoo", "8ビット Shampoo"),
    "opt.shampoo8bit-cholesky": (
        "8-bit Shampoo without error feedback",
        "8ビット Shampoo(誤差補償なし)",
    ),
    "opt.torchao-adamw4bit": ("torchao 4-bit AdamW", "torchao 4ビット AdamW"),
    "opt.torchao-adamw8bit": ("torchao 8-bit AdamW", "torchao 8ビット AdamW"),
    "opt.bnb-adamw8bit": ("bitsandbytes 8-bit AdamW", "bitsandbytes 8ビット AdamW"),
    "opt.soap": ("SOAP", "SOAP"),
    # the page
    "title": (
        "Should we switch optimizers? Trial on {task}",
        "オプティマイザを切り替えるべきか: {task} での試験",
    ),
    "sw.title": (
        "Sweep of {keys} for {optimizer} on {task}",
        "{task} での {optimizer} の {keys} の掃引",
    ),
    "run": (
        "Trial: {task}, {runs} runs of {steps} steps ({seeds} seeds each); {machine}; "
        "{minutes:.1f} min.",
        "試験: {task}、{steps} ステップの実行 {runs} 回(各 {seeds} シード)。{machine}。"
        "所要 {minutes:.1f} 分。",
    ),
    "appendix": ("Appendix", "付録"),
    "kpi_alt": ("The four numbers that decide", "判断に使う4つの数値"),
    # the recommendation
    "rec.adopt": ("Adopt", "採用を推奨"),
    "rec.adopt_memory": ("Adopt if memory-bound", "メモリが制約なら採用"),
    "rec.adopt_faster": ("Adopt to train faster", "学習時間短縮のため採用"),
    "rec.prefer": ("Prefer {reference}", "{reference} を推奨"),
    "rec.no": ("Do not adopt", "採用は見送り"),
    "rec.no_gain": ("No gain: stay with {baseline}", "効果なし: {baseline} のままでよい"),
    "rec.undecided": (
        "Undecided: one seed gives no interval",
        "判断保留: 1シードでは信頼区間が出ない",
    ),
    "rec.sentence": (
        "{verdict} — {candidate}: {evidence}.",
        "{verdict} — {candidate}: {evidence}。",
    ),
    "ev.same_as": ("same {metric} as {other}", "{metric}は{other}と同等"),
    "ev.diff": ("{diff}{unit} {dir} {other} {ci}", "{other}より{diff}{unit}{dir}{ci}"),
    "dir.better": ("better than", "良い"),
    "dir.worse": ("worse than", "悪い"),
    "unit.points": (" points", "ポイント"),
    "ci": ("[95 % CI {lo}, {hi}]", "[95% CI {lo}, {hi}]"),
    "ci1": ("(one seed)", "(1シード)"),
    "ev.memory_vs": (
        "{ratio:.1f}× less optimizer memory at peak than {other}",
        "オプティマイザのピークメモリは{other}の{ratio:.1f}分の1",
    ),
    "ev.memory_same": (
        "about the same optimizer memory at peak as {other} ({mine} vs {theirs})",
        "オプティマイザのピークメモリは{other}とほぼ同じ({mine}対{theirs})",
    ),
    "ev.memory": (
        "{ratio:.2f}× {baseline}'s optimizer memory at peak",
        "オプティマイザのピークメモリは{baseline}の{ratio:.2f}倍",
    ),
    "ev.time": (
        "{ratio:.2f}× {baseline}'s step time",
        "1ステップの時間は{baseline}の{ratio:.2f}倍",
    ),
    "ev.ttq": (
        "{baseline}'s final {metric} in {budget:.0f} % of its steps ({time:.2f}× its training "
        "time)",
        "{baseline}の最終{metric}に{budget:.0f}%のステップで到達(学習時間は{time:.2f}倍)",
    ),
    "ev.ttq_some": (
        "{baseline}'s final {metric} with fewer steps in {n} of {seeds} seeds",
        "{seeds} シード中 {n} シードでより少ないステップで{baseline}の最終{metric}に到達",
    ),
    "ev.ttq_no": (
        "{baseline}'s final {metric} not reached with fewer steps",
        "より少ないステップでは{baseline}の最終{metric}に届かず",
    ),
    "ev.stable": (
        "no instability in {seeds} × {steps} steps",
        "{seeds} × {steps} ステップで不安定な挙動なし",
    ),
    "ev.unstable": ("instability: {events}", "不安定: {events}"),
    # the tiles
    "tile.quality_note": (
        "difference from {baseline}, 95 % CI by seed",
        "{baseline}との差(シード対応の95%信頼区間)",
    ),
    "tile.memory": ("Optimizer memory at peak", "オプティマイザのピークメモリ"),
    "tile.memory_note": (
        "state + step workspace, {baseline} = 1.0",
        "状態 + ステップ作業領域、{baseline} = 1.0",
    ),
    "tile.time": ("Training time", "学習時間"),
    "tile.time_note_cpu": (
        "CPU time per step (one thread), {baseline} = 1.0; time to its final {metric}",
        "1ステップあたりの CPU 時間(1スレッド、{baseline} = 1.0)、最終{metric}到達まで",
    ),
    "tile.time_note": (
        "per step, {baseline} = 1.0; time to its final {metric}",
        "1ステップあたり({baseline} = 1.0)、最終{metric}到達まで",
    ),
    "tile.stability": ("Stability", "安定性"),
    "tile.stability_note": (
        "events in all runs; gradient-norm peak, {baseline} = 1.0",
        "全実行の事象数、勾配ノルムのピーク({baseline} = 1.0)",
    ),
    "tile.events": (
        "events: {events}; gradient-norm peak {ratio}",
        "事象: {events}、勾配ノルムのピーク {ratio}",
    ),
    "tile.grad_peak": ("gradient-norm peak {ratio}", "勾配ノルムのピーク {ratio}"),
    # events
    "event.nonfinite": ("{n} non-finite steps", "非有限ステップ {n} 回"),
    "event.spikes": ("{n} loss spikes", "損失スパイク {n} 回"),
    "event.failures": ("{n} root / Cholesky failures", "逆根 / Cholesky 失敗 {n} 回"),
    "event.diverged": ("{n} diverged runs", "発散した実行 {n} 回"),
    # a sweep
    "sw.default": (" (default)", "(既定値)"),
    "sw.reference": (" (reference)", "(参照)"),
    "sw.none": ("No setting finished with a finite result.", "有限の結果で終わった設定はない。"),
    "sw.best": (
        "The best mean final {metric}: {best} ({value}).",
        "最終{metric}の平均が最も良かったのは {best}({value})。",
    ),
    "sw.no_default": (
        "The current default is not among the settings swept.",
        "現在の既定値は掃引した設定に含まれていない。",
    ),
    "sw.vs_default": (
        "Against the default ({default}), seed by seed: {verdicts}.",
        "既定値({default})とのシード対応の比較: {verdicts}。",
    ),
    "sw.better": ("better: {entries}", "良い: {entries}"),
    "sw.worse": ("worse: {entries}", "悪い: {entries}"),
    "sw.same": ("within the noise: {entries}", "雑音の範囲内: {entries}"),
    "sw.vs": ("{setting}: {phrase}.", "{setting}: {phrase}。"),
    "sw.stable": (
        "No run had a non-finite step, a loss spike, a root or Cholesky failure, or diverged.",
        "非有限ステップ、損失スパイク、逆根・Cholesky の失敗、発散はどの実行にもなかった。",
    ),
    "sw.unstable": ("Stability events: {events}.", "不安定な事象: {events}。"),
    "sw.method": (
        "*Δ vs default*: the mean over seeds of (this − the setting equal to the current "
        "defaults, same seed), with its 95 % interval from the run-to-run noise at a fixed seed, "
        "estimated once for the whole sweep (residual of an additive setting + seed model over "
        "every row: {noise}); **bold** when the interval excludes 0.",
        "*既定値との差*: (この設定 − 現在の既定値と同じ設定、同じシード)のシード平均と、固定シード"
        "での実行間のばらつきから求めた95%信頼区間。ばらつきは掃引全体で一度推定する(全行に対す"
        "る設定 + シードの加法モデルの残差: {noise})。区間が0を含まないとき**太字**。",
    ),
    "sw.noise": (
        "σ = {sigma} per run, {dof} degrees of freedom",
        "1実行あたり σ = {sigma}、自由度 {dof}",
    ),
    "sw.noise1": ("not estimable with one seed", "1シードでは推定できない"),
    # tables and plots
    "col.optimizer": ("optimizer", "オプティマイザ"),
    "col.setting": ("setting", "設定"),
    "col.kpi": ("{baseline} = 1.0", "{baseline} = 1.0"),
    "col.loss": ("test loss", "テスト損失"),
    "col.ppl": ("perplexity", "パープレキシティ"),
    "col.delta": ("Δ vs default [95 % CI]", "既定値との差 [95% CI]"),
    "col.peak": ("optimizer memory at peak (MiB)", "オプティマイザのピークメモリ (MiB)"),
    "col.state": ("optimizer state (MiB)", "オプティマイザ状態 (MiB)"),
    "col.precond": ("of which preconditioners (MiB)", "うち前処理行列 (MiB)"),
    "col.rss": ("process peak (MiB)", "プロセスのピーク (MiB)"),
    "col.ms": ("time per step (ms)", "1ステップの時間 (ms)"),
    "col.cpu_ms": ("CPU time per step (ms)", "1ステップの CPU 時間 (ms)"),
    "col.train_s": ("training time (s)", "学習時間 (s)"),
    "col.ttq": ("steps to {baseline}'s {metric} (%)", "{baseline}の{metric}までのステップ (%)"),
    "col.spikes": ("loss spikes", "損失スパイク"),
    "col.nonfinite": ("non-finite steps", "非有限ステップ"),
    "col.failures": ("root / Cholesky failures", "逆根 / Cholesky 失敗"),
    "col.gradratio": ("gradient-norm peak / median", "勾配ノルム ピーク / 中央値"),
    "col.qerr": ("quantization error, first → last", "量子化誤差(最初 → 最後)"),
    "col.seed": ("seed {seed}", "シード {seed}"),
    "h.results": ("Results", "結果"),
    "h.rules": ("How the recommendation is made", "推奨の決め方"),
    "h.per_seed": ("Per seed", "シード別"),
    "h.hparams": ("Hyperparameters", "ハイパーパラメータ"),
    "h.plots": ("Plots", "グラフ"),
    "h.glossary": ("Glossary", "用語集"),
    "h.run": ("How this was run", "実行条件"),
    "hp.untuned": ("(family default, not tuned)", "(系統の既定値、未調整)"),
    "hp.shared": ("Shared by every row: {values}.", "全行に共通: {values}。"),
    "plot.step": ("step", "ステップ"),
    "plot.loss": ("training loss (moving mean)", "学習損失(移動平均)"),
    "plot.metric": ("{metric} (periodic evaluation)", "{metric}(定期評価)"),
    "plot.final": ("final {metric} (dots: seeds)", "最終{metric}(点: シード)"),
    "plot.final_std": (
        "final {metric} (mean ± std over seeds)",
        "最終{metric}(シード平均 ± 標準偏差)",
    ),
    "plot.state": ("state", "状態"),
    "plot.workspace": ("step workspace", "ステップ作業領域"),
    "plot.rss": (
        "process peak above the start of training (MiB)",
        "学習開始時からのプロセスのピーク増分 (MiB)",
    ),
    "plot.cpu_time": ("training CPU time (s)", "学習の CPU 時間 (s)"),
    "plot.full": ("full schedule", "全スケジュール"),
    "plot.reach": ("to {baseline}'s final {metric}", "{baseline}の最終{metric}まで"),
    "plot.grad": ("gradient norm", "勾配ノルム"),
    "plot.events": ("{n} events", "事象 {n} 件"),
    "plot.qerr": ("quantization error of the stored factors", "保存された因子の量子化誤差"),
    "plot.update": ("update norm / parameter norm", "更新ノルム / パラメータノルム"),
    "plot.band": ("mean over seeds (band: min–max)", "シード平均(帯: 最小–最大)"),
    # the rules (appendix)
    "rules": (
        "The candidate is the first 4-bit optimizer run ({candidate}), the baseline the first that "
        "is neither Shampoo nor a peer from another library ({baseline}). Each difference is "
        "paired by seed (same seed = same initialisation and data order) with a 95 % Student-t "
        "interval over the seeds. "
        "*Prefer 32-bit Shampoo* when that one ends at least as well and the candidate saves "
        "less than 10 % of its optimizer memory at peak. "
        "*Do not adopt* when the candidate had a non-finite step, a root or Cholesky failure, a "
        "diverged run or more loss spikes than the baseline, or when its {metric} is worse than "
        "the baseline's (interval entirely on the wrong side). *Adopt* when it is better; *adopt "
        "if memory-bound* when, in addition, 32-bit Shampoo is better or ends as well while being "
        "faster (more than 5 %): the candidate's reason is then its memory. When the interval "
        "includes no difference: *adopt to train faster* if every seed reached the baseline's "
        "final {metric} with a shorter schedule in less training time, else *no gain*. With one "
        "seed: *undecided*.",
        "候補は最初の4ビットオプティマイザ({candidate})、基準は Shampoo でも他ライブラリの"
        "代替でもない最初のもの({baseline})。差はシードごとに対応させ(同じシード = 同じ初期値と"
        "データ順)、シード間の"
        "スチューデント t による95%信頼区間を付ける。32ビット Shampoo が同等以上で終わり、候補が"
        "節約するピークメモリが10%未満なら*32ビット Shampoo を推奨*。候補に非有限ステップ、逆根・"
        "Cholesky の失敗、発散、または基準より多い損失スパイクがあった場合、あるいは{metric}が基準"
        "より悪い(区間全体が悪い側)場合は*採用は見送り*。良い場合は*採用を推奨*。さらに 32ビット "
        "Shampoo の方が良い、または同等で5%以上速い場合は*メモリが制約なら採用*(候補の利点は"
        "メモリ)。区間が差なしを含む場合: 全シードでより短いスケジュールが基準の最終{metric}に"
        "少ない学習時間で到達すれば*学習時間短縮のため採用*、そうでなければ*効果なし*。1シード"
        "では*判断保留*。",
    ),
    # glossary (appendix)
    "gl.peak": (
        "**Optimizer memory at peak**: the bytes of the optimizer's state plus the most bytes of "
        "temporaries one step holds at once, measured at the second step and at the first two "
        "where Shampoo's roots are due (on CUDA by the allocator, elsewhere by counting the "
        "tensors the step creates). What the optimizer adds to training's peak memory.",
        "**オプティマイザのピークメモリ**: オプティマイザの状態のバイト数に、1ステップが同時に保持"
        "する一時テンソルの最大バイト数を加えたもの。2ステップ目と Shampoo の逆根を計算する最初の"
        "2ステップで測定(CUDA ではアロケータ、それ以外ではステップが作るテンソルを数える)。学習の"
        "ピークメモリにオプティマイザが加える量。",
    ),
    "gl.rss": (
        "**Process peak**: the whole process's resident-memory high-water mark (Linux `VmHWM`): "
        "data, PyTorch and activations included; on a small model it hides the optimizer.",
        "**プロセスのピーク**: プロセス全体の常駐メモリの最高水位(Linux `VmHWM`)。データ、"
        "PyTorch、活性化を含み、小さなモデルではオプティマイザの差が埋もれる。",
    ),
    "gl.time": (
        "**Time per step**: forward, backward and optimizer step, evaluations excluded.",
        "**1ステップの時間**: 順伝播、逆伝播、オプティマイザのステップ(評価を除く)。",
    ),
    "gl.ttq": (
        "**Time to quality**: the same optimizer trained with shorter full schedules ({budgets} % "
        "of the steps, shortest first); the shortest whose final {metric} reaches the baseline's "
        "full-schedule one, in steps and in training time.",
        "**品質到達時間**: 同じオプティマイザをより短い完全なスケジュール(ステップの {budgets} %、"
        "短い順)で学習し、最終{metric}が基準の全スケジュールの値に届く最短のもの(ステップ数と"
        "学習時間)。",
    ),
    "gl.spike": (
        "**Loss spike**: a step whose training loss exceeds the median of the previous {window} "
        "by more than {mads:g} robust standard deviations and by more than {rise:.0f} % of that "
        "median (a learning rate ×10 for a few steps is flagged). **Non-finite step**: a NaN/inf "
        "loss or a step the optimizer skipped. **Root / Cholesky failure**: a factorisation "
        "that failed and kept its previous value. **Gradient-norm peak**: the largest gradient "
        "norm of the run over its median (after the first 5 % of the steps).",
        "**損失スパイク**: 学習損失が直前 {window} ステップの中央値を、頑健標準偏差の {mads:g} 倍"
        "以上かつ中央値の {rise:.0f}% 以上上回ったステップ(学習率を数ステップ10倍にすると検出"
        "される)。**非有限ステップ**: 損失が NaN/inf、またはオプティマイザがスキップしたステップ。"
        "**逆根 / Cholesky 失敗**: 分解に失敗し前の値を保ったもの。**勾配ノルムのピーク**: 実行中"
        "の最大勾配ノルムと中央値の比(最初の5%のステップを除く)。",
    ),
    "gl.quant": (
        "**Quantization error**: the mean relative error ‖x − D(Q(x))‖/‖x‖ of what the 4-bit "
        "factors store (the Cholesky factor; the matrix itself for naive 4-bit), at each "
        "periodic evaluation.",
        "**量子化誤差**: 4ビット因子が保存するもの(Cholesky 因子、単純4ビットでは行列そのもの)の"
        "平均相対誤差 ‖x − D(Q(x))‖/‖x‖、定期評価ごと。",
    ),
    "gl.names": (
        "**32-bit Shampoo**: Shampoo with its preconditioners in fp32. **4-bit Shampoo**: the "
        "same, stored as 4-bit Cholesky factors with error feedback (arXiv 2412.10663), 8 bits "
        "for the factors where 4 cost the most within 1/8 of 32-bit's bytes "
        "(`qshampoo.Shampoo4bit`'s default; *Paper A*: 4 bits everywhere). **Naive 4-bit "
        "Shampoo**: the matrices themselves quantized to 4 bits.",
        "**32ビット Shampoo**: 前処理行列を fp32 で保持する Shampoo。**4ビット Shampoo**: 同じもの"
        "を誤差補償付きの4ビット Cholesky 因子で保持(arXiv 2412.10663)し、32ビットの 1/8 の容量内で"
        "4ビットの影響が最も大きい因子は8ビットで保持(`qshampoo.Shampoo4bit` の既定。*論文A*: "
        "すべて4ビット)。**単純4ビット Shampoo**: 行列そのものを4ビットに量子化。",
    ),
    "skipped": ("Not available here: {what}.", "この環境で使えなかったもの: {what}。"),
    "lr_source": ("Learning rates: {source}.", "学習率: {source}。"),
    # how it was run (appendix)
    "run.command": ("Command: `{command}`", "コマンド: `{command}`"),
    "run.date": (
        "Date: {date}. Machine: {machine}, qshampoo {version}; device `{device}`.",
        "日時: {date}。マシン: {machine}、qshampoo {version}、デバイス `{device}`。",
    ),
    "run.task": (
        "Task: {task_description}. {steps} steps of batch {batch_size}, seeds {seeds}; learning "
        "rate: {warmup:g}% linear warm-up, cosine decay to {final_lr:g}× peak. Final numbers on "
        "{where}.",
        "タスク: {task_description}。バッチ {batch_size} で {steps} ステップ、シード {seeds}。"
        "学習率: "
        "{warmup:g}% の線形ウォームアップ後、ピークの {final_lr:g} 倍までコサイン減衰。"
        "最終値の評価対象: {where}。",
    ),
    "run.load": (
        "Machine load (1-minute load average) at start / end: {start:g} / {end:g} on {cores} "
        "cores; other work on the machine slows every timing.",
        "マシンの負荷(1分平均ロードアベレージ)開始時 / 終了時: {start:g} / {end:g}({cores} コア)。"
        "他の処理が動いているとすべての時間が遅くなる。",
    ),
    "run.validation": (
        "**Evaluated on a validation split held out of the training data.**",
        "**学習データから取り分けた検証用分割で評価。**",
    ),
    "run.overrides": ("Overrides (`--hp`): `{overrides}`.", "上書き(`--hp`): `{overrides}`。"),
    "run.reused": (
        "{n} runs with identical settings (same fingerprint) were taken from earlier folders "
        "instead of being trained again; their timings are from when they ran.",
        "同一設定(同じフィンガープリント)の {n} 実行は再学習せず以前のフォルダから取り込んだ。"
        "時間はその実行時のもの。",
    ),
    "run.shared": (
        "Runs of {names} shared one process: their process peak is measured from a reset "
        "high-water mark but can be lowered by memory freed by earlier runs.",
        "{names} の実行は1つのプロセスを共有した。プロセスのピークはリセットした最高水位から"
        "測るが、先の実行が解放したメモリの分だけ低く出ることがある。",
    ),
}


def t(key: str, lang: str = "en", **fields) -> str:
    """The entry ``key`` in ``lang`` ("en" or "ja"), formatted with ``fields``."""
    if lang not in LANGS:
        raise ValueError(f"unknown language {lang!r}; choose from {', '.join(LANGS)}")
    return TEXT[key][LANGS.index(lang)].format(**fields)
