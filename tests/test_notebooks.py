"""Execute every course notebook once with the quick profile (papermill), then
(1) assert the bounds of its issue on the metrics it recorded, and
(2) compare its ``# NBVAL_CHECK_OUTPUT`` cells with the outputs stored in the notebook.

``pytest -m smoke`` executes every notebook once more with the ``smoke`` profile, the paper profile's code path
(same networks, losses, full-dataset readers, schedules, evaluation) shrunk to about a minute, on the miniature
datasets of ``tests/miniatures`` written in the official layouts: it asserts that the run finishes and records every
metric the paper profile compares and every artifact it names, never the values.

Run one alone with ``pytest tests/test_notebooks.py -k 01`` (quick) or ``-k "smoke and 01"``.
"""
from __future__ import annotations

import pytest

from vklib import course
from nbcheck import checked_cells, compare


BOUNDS = {}


def bounds(nb_id):
    """Register the metric bounds of notebook ``nb_id``: a function ``(metrics, result_json) -> None`` that asserts."""
    def register(check):
        BOUNDS[nb_id] = check
        return check
    return register


@pytest.mark.notebook
@pytest.mark.parametrize("nb", course.available(), ids=lambda nb: nb.id)
def test_notebook(nb, tmp_path):
    assert nb.id in BOUNDS, f"notebook {nb.stem} has no metric bounds in tests/test_notebooks.py"
    result = course.execute(nb, profile="quick", out=tmp_path)
    assert result["profile"] == "quick" and result["notebook"] == nb.stem
    assert result["metrics"], "no metrics recorded"
    unlogged = sorted(set(result["paper"]) - set(result["metrics"]))
    assert not unlogged, f"the paper's numbers for {unlogged} (vklib/paper_numbers.csv) have no logged metric"
    for name in result.get("artifacts", []):
        assert (tmp_path / name).is_file(), f"artifact {name} named in the JSON was not written"
    problems = compare(nb.path, tmp_path / f"{nb.stem}.ipynb")
    assert not problems, "\n\n".join(problems)
    BOUNDS[nb.id](result["metrics"], result)


@pytest.fixture(scope="session")
def miniature_data(tmp_path_factory):
    """Every miniature dataset, written once: the ``data_dir`` of the smoke runs."""
    from miniatures import write_all
    return write_all(tmp_path_factory.mktemp("miniature_data"))


#: Seconds a smoke run may take on the 2 CI cores (kernel start included); each aims at about a minute.
SMOKE_LIMIT_S = 240


@pytest.mark.smoke
@pytest.mark.parametrize("nb", course.available(), ids=lambda nb: f"smoke-{nb.id}")
def test_smoke(nb, tmp_path, miniature_data):
    result = course.execute(nb, profile="smoke", out=tmp_path, params={"data_dir": str(miniature_data)})
    assert result["profile"] == "smoke" and result["paper"] == {} and "compared with none" in result["note"]
    metrics = result["metrics"]
    missing = sorted(set(result["paper_metrics"]) - set(metrics))
    assert not missing, f"the paper profile's path did not log {missing}, the metrics it compares with the paper"
    missing = sorted(set(nb.headline) - set(metrics))
    assert not missing, f"headline metrics {missing} (vklib.course.CATALOGUE) not logged"
    for name in result.get("artifacts", []):
        assert (tmp_path / name).is_file(), f"artifact {name} named in the JSON was not written"
    assert result["wall_s"] < SMOKE_LIMIT_S, f"smoke run took {result['wall_s']:.0f} s"


@pytest.mark.parametrize("nb", course.available(), ids=lambda nb: nb.id)
def test_notebook_conventions(nb):
    import nbformat
    book = nbformat.read(str(nb.path), as_version=4)
    assert book.metadata.kernelspec.name == "python3"
    tagged = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    params = course.notebook_parameters(nb)
    for name, default in {"profile": "'quick'", "seed": "0", "device": "'auto'", "results_dir": "'results'",
                          "data_dir": "None"}.items():
        assert params.get(name) in (default, default.replace("'", '"')), f"parameter {name} = {default} expected"
    for cell in checked_cells(nb.path):
        assert cell.outputs, f"cell {cell.get('id')} is marked NBVAL_CHECK_OUTPUT but stores no output"


# ------------------------------------------------------------------------------------------------------------------
# Metric bounds, one function per notebook (from each notebook's issue; checked on honest runs).

@bounds("00")
def bounds_00(m, r):
    assert m["tour_datasets"] >= 9
    assert m["tour_convnet_acc"] >= 0.85, "a small ConvNet trained one epoch on the 5k MNIST subset"
    assert m["tour_seeds_acc_mean"] >= 0.85, "the same recipe, several seeds in one pass"
    assert m["tour_seeds_acc_std"] < 0.05, "seeds of one recipe agree to a few points"


@bounds("03")
def bounds_03(m, r):
    p = r["params"]
    assert m["n_seeds"] >= 3 and p["seeds"] >= 3, "means over at least 3 seeds"
    assert {"k5", "k4"} <= set(p["kernels"]) and p["kernel_size"] == 27, \
        "the rule's cases: the smallest and the largest Levin kernel, one 27 x 27 support for every case"
    for arm in ("blurred", "tv_blind", "selfdeblur_blind", "dikp_blind", "dip_nonblind"):
        for metric in ("psnr", "ssim"):
            assert f"{metric}_{arm}" in m and f"{metric}_{arm}_std" in m, f"{metric}_{arm} (mean and std) missing"
        assert 0.0 <= m[f"ssim_{arm}"] <= 1.0
    for arm in ("tv_blind", "selfdeblur_blind", "dikp_blind"):
        assert f"kernel_error_{arm}" in m, f"kernel error of {arm} missing"
    # issue 21's key comparison, on the means over seeds (quick: cameraman x {k5, k4}, 96 x 96 crops, 3 seeds; the DIKP
    # arms with kernel centring and a coarse-to-fine start). Met: non-blind DIP >= blurred + 2 dB (stored 2-thread run:
    # 23.43 vs 15.70) and blind DIKP >= TV blind (18.48 +- 1.53 vs 17.52 +- 0.03 dB; 18.46 +- 1.64 at 1 thread). The
    # second margin, about 1 dB, is within DIKP's spread over seeds.
    # NOT met at the quick scale: blind DIKP >= blurred + 3 dB (18.48 vs the 18.70 needed); not asserted, and no weaker
    # bound replaces it. Nor does the blind result hold beyond the scored image: on held-out cases (house, peppers x k2,
    # k7, one seed; notebook 03, section 6 gives the command) blind DIKP gives 20.34 dB against blurred 21.36 and TV
    # blind 21.04.
    assert m["psnr_dip_nonblind"] >= m["psnr_blurred"] + 2.0, "non-blind DIP: at least 2 dB over the blurred input"
    assert m["psnr_dikp_blind"] >= m["psnr_tv_blind"], "blind DIKP at least as good as the TV blind baseline"


@bounds("07")
def bounds_07(m, r):
    assert m["n_seeds"] >= 3 and r["params"]["target"] == "score", "3+ seeds, every method explaining the logit"
    for method in ("normgrad", "meta_normgrad", "gradient", "gradcam", "random"):
        for mode in ("deletion", "insertion"):
            assert f"{mode}_auc_{method}" in m and f"{mode}_auc_{method}_std" in m, f"{mode} AUC of {method} missing"
    for method in ("normgrad", "meta_normgrad", "gradient", "gradcam", "center"):
        assert 0.0 <= m[f"pointing_{method}"] <= 1.0, f"pointing accuracy of {method} (a fraction) missing"
    # the key comparison (issue 28), on the means over the seeds (network, masking order)
    assert m["deletion_auc_normgrad"] < m["deletion_auc_random"], "NormGrad deletes the class faster than random"
    assert m["insertion_auc_normgrad"] > m["insertion_auc_random"], "NormGrad restores the class faster than random"
    # a check of the pointing protocol, not a claim of the paper: COCO photos are centred, random maps are not
    assert m["pointing_center"] > m["pointing_random"], "the centre baseline beats random points on COCO"


@bounds("02")
def bounds_02(m, r):
    assert m["n_seeds"] >= 3 and r["params"]["seeds"] * r["params"]["n_recon"] >= 32, \
        "means over at least 3 seeds and at least 32 reconstructions per dataset and method"
    assert m["idlg_label_acc"] == 1.0, "iDLG's label rule is exact for single-sample gradients (mean over seeds)"
    assert m["idlg_success_rate"] >= m["dlg_success_rate"], "iDLG succeeds at least as often as DLG (means)"
    assert m["idlg_success_rate"] >= 0.6, "iDLG's success rate, mean over datasets and seeds"
    for d in r["params"]["datasets"]:
        assert m[f"idlg_label_acc_{d}"] == 1.0 and f"dlg_label_acc_{d}" in m and f"idlg_success_rate_{d}" in m
        assert f"dlg_success_rate_{d}_ci_low" in m, f"Wilson interval of {d} not logged"
    assert m["batch_label_acc_b32"] >= 0.9, "the bias counting rule recovers the labels of a batch of 32"
    assert m["batch_label_acc_b32"] > m["batch_label_acc_sign_b32"] + 0.3, "counting beats one-label-per-negative-row"
    assert m["ig_psnr"] > m["idlg_relu_psnr"] + 2.0, "on a ReLU victim, Inverting Gradients beats iDLG (same budget)"


@bounds("04")
def bounds_04(m, r):
    # issue 26: means over 3 seeds of the quick profile at its key dimension (64-D; the comparison runs where the
    # paper's gain is largest, and where plain equivariance's descriptors pick up identity: see the notebook)
    p = r["params"]
    assert m["n_seeds"] >= 3 and p["seeds"] >= 3 and p["key_dim"] == 64, "the key comparison: 3+ seeds at 64-D"
    for k in ("iod_error_dve", "iod_error_no_dve", "iod_error_mean_shape", "iod_error_random_features",
              "match_error_dve", "match_error_no_dve"):
        assert k in m and f"{k}_std" in m, f"{k} (mean, std over seeds) missing"
    for dim in (16, 64):  # the descriptor-size sweep, both arms, in the results table
        for arm in ("dve", "no_dve"):
            assert f"iod_error_{arm}_{dim}d" in m and f"match_error_{arm}_{dim}d" in m, f"{arm} at {dim}-D missing"
    # The key comparison of issue 26, on the means. Holds in the quick profile (stored run, 2 threads: 0.1056 +-
    # 0.0064 vs 0.1117 +- 0.0053; per seed a tie, 0.1115 vs 0.1114, then DVE ahead by 0.008 and 0.011):
    assert m["iod_error_dve"] < m["iod_error_no_dve"], "DVE's landmark error must be below plain equivariance's"
    assert m["iod_error_dve"] < m["iod_error_mean_shape"], "DVE landmarks must beat predicting the mean shape"
    assert m["iod_error_dve"] < m["iod_error_random_features"], "DVE must beat the same regressor on an untrained network"
    # Not a bound of the issue, measured (stored run: 0.163 +- 0.013 vs 0.207 +- 0.013): at 64-D the exchange makes
    # descriptors match landmarks across identities better, the mechanism the paper gives for its gain.
    assert m["match_error_dve"] < m["match_error_no_dve"], "DVE matches landmarks across identities better at 64-D"


@bounds("01")
def bounds_01(m, r):
    # issue 19: means over seeds of the whole pipeline (condensation + evaluation), every arm evaluated with the
    # paper's MNIST augmentation
    assert m["n_seeds"] >= 3 and r["params"]["eval_augment"] == "paper", "3 seeds, the paper's augmentation"
    assert m["acc_dc"] >= m["acc_random"] + 0.10, "DC beats random real images by at least 10 points"
    assert m["acc_dc"] >= 0.80, "DC with one image per class on the shipped MNIST subset"
    # The paper's ordering (91.7 vs 89.2 / 89.3). With the first edition's 150 iterations of 32 real images the lead
    # sat inside DC's seed spread and flipped with float summation order alone; 300 iterations of 16 (similar cost)
    # put DC ahead in every seed (the notebook's "gap to the paper" gives the commands and numbers).
    assert m["acc_dc"] >= max(m["acc_herding"], m["acc_kcenter"]), "DC matches or beats the herding/k-center coresets"
    assert all(f"acc_{v}_std" in m for v in ("dc", "herding", "kcenter")), "coreset accuracies (mean, std) missing"
    assert m["acc_dm"] > 0.5 and m["time_dm_s"] > 0 and m["time_dc_s"] > 0, "DM learns; both times are logged"


@bounds("06")
def bounds_06(m, r):
    # issue 27: means over 3 seeds of the quick profile
    assert m["n_seeds"] >= 3 and r["params"]["seeds"] >= 3, "the key comparison runs over at least 3 seeds"
    for v in ("head_only", "bn_head", "single_adapter", "dynamic_adapters", "dynamic_adapters_style"):
        assert m[f"acc_{v}"] >= 2 / 7, f"{v}: mean accuracy must beat chance (1/7) clearly, at least twice chance"
        assert f"acc_{v}_std" in m and f"acc_pooled_{v}" in m, f"{v}: spread or pooled accuracy not logged"
    for v in ("head_only", "single_adapter", "dynamic_adapters"):
        assert f"acc_smallest_domain_{v}" in m, f"acc_smallest_domain_{v} (unbalanced variant) was not recorded"
    assert m["acc_dynamic_adapters"] >= m["acc_single_adapter"], "dynamic adapters >= a single adapter (paper)"
    assert m["acc_dynamic_adapters"] >= m["acc_bn_head"], "dynamic adapters >= BatchNorm + head (the control)"
    # Issue 27's gate bound. gate_nmi_init scores the untrained gates with BatchNorm re-estimated on the training
    # images (adapters.reestimate_batchnorm: no labels, no gradient step), the state training starts from: the adapter
    # arms train BatchNorm, so the gates never read CIFAR-10-normalised features. The earlier control (the backbone's
    # CIFAR-10 statistics) is still logged as gate_nmi_init_pretrained_bn. Measured with this code, 3 seeds each:
    # 1 thread: gate_nmi 0.189 +- 0.055 vs gate_nmi_init 0.096 +- 0.014, paired +0.084, +0.139, +0.057 (earlier
    # control +0.064, +0.128, +0.071); 2 threads (the stored run, another backbone): 0.189 +- 0.027 vs 0.114 +- 0.067,
    # paired +0.124, +0.062, +0.039 (earlier control +0.144, +0.082, +0.062). It holds on the means in both; single
    # seeds can fall below 0.05. The gain rests on the backbone drawn (pretrained in the notebook, once, shared by the
    # seeds; float summation order changes it): over 16 (backbone, seed) pairs (these 6 and 10 probes on two other
    # splits, backbones pretrained with seeds 5-12) the per-seed gain was 0.094 +- 0.052 (min +0.039) over this control
    # and 0.093 +- 0.049 (min -0.032) over the earlier one: as independent draws, a mean over 3 seeds falls below 0.05
    # in about 7 % of runs (normal approximation), more since the 3 seeds share one backbone. An earlier code version's
    # 1-thread run gave +0.082, 0.000, -0.030 over the earlier control.
    assert m["gate_nmi"] >= m["gate_nmi_init"] + 0.05, "trained gates >= untrained gates + 0.05 NMI (issue 27)"
    for name in ("gate_nmi", "gate_nmi_init", "gate_nmi_init_pretrained_bn"):
        assert f"{name}_std" in m and 0.0 <= m[name] <= 1.0, f"{name} (mean over seeds, with _std) not recorded"


@bounds("08")
def bounds_08(m, r):
    # issue 29, on the means over the seeds. Quick protocol: a base step of 30 LFW people, then 5 steps of 2; the
    # distillation's temperature and weight (with LwF), then CRL's k and margin, chosen on 10 validation identities,
    # every number on 12 test identities. CRL's lead over LwF is the smallest margin here: in the stored run it is
    # smaller than each arm's spread over seeds (which comes mostly from which people are test identities) but
    # positive in every seed (the notebook's seed-paired lines).
    p = r["params"]
    assert m["n_seeds"] >= 3 and p["n_val"] >= 1, "means over 3+ seeds; settings chosen on validation identities"
    assert len(p["distil_grid"]) >= 2 and len(p["crl_grid"]) >= 2, "T and weight, k and margin: each chosen from 2+"
    assert [m["temperature"], m["kd_weight"]] in p["distil_grid"] and [m["crl_k"], m["crl_margin"]] in p["crl_grid"]
    for v in ("finetune", "lwf", "crl", "joint"):
        assert f"rank1_{v}_std" in m and f"val_rank1_{v}" in m, f"rank1_{v} (mean, std; validation) missing"
        assert m[f"rank1_{v}"] >= 0.25, f"{v}: test rank-1 must reach three times chance (about 0.08)"
        assert m[f"rank1_second_{v}"] >= 0.8, f"{v}: rank-1 on the unseen ORL faces must reach 0.8"
    assert all(f"forgetting_{v}" in m and f"bwt_{v}" in m for v in ("finetune", "lwf", "crl"))
    assert m["rank1_crl"] >= m["rank1_lwf"], "CRL must match or beat LwF (mean test rank-1 over seeds)"
    assert m["rank1_crl"] >= m["rank1_finetune"], "CRL must match or beat fine-tuning (mean test rank-1 over seeds)"
    assert m["rank1_joint"] >= m["rank1_crl"], "joint training (the upper bound) must match or beat CRL"


@bounds("05")
def bounds_05(m, r):
    assert m["n_seeds"] >= 3, "the key comparison runs over at least 3 seeds"
    for k in ("acc_supervised", "acc_mean_teacher", "acc_l2i", "acc_l2i_one_step", "iod_error_supervised",
              "iod_error_mean_teacher", "iod_error_l2i"):
        assert k in m and f"{k}_std" in m, f"{k} (mean, std over seeds) missing"
    # The key comparison of issue 22, on the means over the seeds. All four hold in the quick profile once the
    # virtual step of the digits (alpha = 0.001) and lambda_u of the faces (1) are chosen on held-out training data
    # (notebook 05, section 8; the test sets play no part). Stored run (1 thread): accuracy L2I 0.9170 +- 0.0223,
    # Mean Teacher 0.9092 +- 0.0199, supervised 0.8744 +- 0.0077; landmark error L2I 0.1187 +- 0.0013, Mean Teacher
    # 0.1237 +- 0.0025, supervised 0.1260 +- 0.0053.
    # Thin: L2I's lead over Mean Teacher on the digits (+0.008) is inside one std of either arm and L2I is ahead on two
    # of the three seeds only; on held-out digits the two are level (0.924 vs 0.921). The faces' leads hold on every
    # seed.
    assert m["acc_l2i"] >= m["acc_mean_teacher"], "L2I's accuracy must reach Mean Teacher's"
    assert m["acc_l2i"] >= m["acc_supervised"] + 0.03, "L2I must beat supervised-only by 3 points of accuracy"
    assert m["iod_error_l2i"] <= m["iod_error_mean_teacher"], "L2I's landmark error must not exceed Mean Teacher's"
    assert m["iod_error_l2i"] <= m["iod_error_supervised"], "L2I's landmark error must not exceed supervised-only's"
    # Not bounds of the issue, measured: Mean Teacher beats supervised-only on the digits (every seed in the stored
    # run).
    assert m["acc_mean_teacher"] >= m["acc_supervised"] + 0.01, "Mean Teacher beats supervised-only on the digits"


@bounds("09")
def bounds_09(m, r):
    # issue 23: a compositional split (no test reference caption occurs in training) in a low-data regime, four
    # arms, means over at least 3 seeds
    assert r["params"]["dataset"] == "compositional_scenes" and r["params"]["n_train"] <= 1000, "the key comparison"
    assert m["caption_overlap"] == 0, "no test image may have a reference caption identical to a training one"
    assert m["n_seeds"] >= 3, "the key comparison runs over at least 3 seeds"
    for v in ("baseline", "sae", "clta", "clta_sae"):
        assert f"cider_{v}" in m and f"cider_{v}_std" in m, f"cider_{v} (mean, std over seeds) was not recorded"
        assert m[f"bleu4_{v}"] >= 0.3, f"{v}: held-out BLEU-4 of the trained captioner must reach 0.3"
        assert m[f"bleu4_{v}"] >= m["bleu4_untrained"] + 0.25, f"{v}: far above an untrained decoder (BLEU-4 +0.25)"
    # NOT asserted: the bound cider_clta_sae >= cider_baseline (the paper's claim) does not hold on this split
    # (quick, seeds 0-2: CIDEr 3.33 +- 0.02 against 3.41 +- 0.02; CLTA alone 3.29, baseline + SAE 3.45). The notebook
    # shows why (CLTA's higher training cross-entropy at 150 steps; no arm names a held-out pair) in its closing note,
    # and a table of commands beside it: with 300 or 4,000 training scenes, 32 topics or 300 steps, CLTA + SAE stays
    # below the baseline (by 0.030 to 0.119 CIDEr, 1 thread).


@bounds("10")
def bounds_10(m, r):
    for arm in ("generic", "head_k10", "head_k100", "bn_head_k100", "adapter_k10", "adapter_k100", "adapter_all_k100",
                "finetune_k100", "content_generic", "content_head_k100", "content_adapter_k100"):
        assert f"spearman_{arm}" in m and f"spearman_{arm}_std" in m, f"spearman_{arm} (mean, std over seeds) missing"
    assert m["n_seeds"] >= 3, "the key comparison runs over at least 3 seeds"
    assert m["user_params"] < m["model_params"] / 5, "a user owns a small part of the network"
    # the key comparison (issue 24), on the means over the seeds
    assert m["spearman_adapter_k100"] >= m["spearman_generic"] + 0.05, \
        "residual adapters from 100 ratings must beat the generic model's mean Spearman by 0.05"
    # measured with margin in the quick profile (not bounds of the issue): at k = 100 the adapters beat the
    # authors' last-layer baseline, with global-statistics raters and with content-loving raters
    assert m["spearman_adapter_k100"] > m["spearman_head_k100"], "k = 100: adapters beat the last layer"
    assert m["spearman_content_adapter_k100"] > m["spearman_content_head_k100"], "content raters: adapters beat the head"
