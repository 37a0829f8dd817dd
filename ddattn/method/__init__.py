"""The method of Maekawa et al. (ACL 2023), "Dataset Distillation with Attention Labels for Fine-tuning
BERT", and nothing else: it imports only torch, safetensors and itself (tests/test_imports.py). Files,
settings, logging and checkpoints live outside it, in ddattn/.

The paper's equations, and where each one is computed:

    Eq. 1    θ_{t+1} = θ_t − η̃ ∇ L(x̃_t, ỹ_t, θ_t)        unroll.sgd_step; L_task = unroll.soft_cross_entropy
    Eq. 2    θ_T = F(θ_0; D̃, η̃, T)                     unroll.train_on_distilled (no graph: evaluation)
    Eq. 3–4  L_distill = L(x_t, y_t, θ_T)                unroll.outer_loss
    Eq. 5    min over D̃, η̃ of E_θ0 [L_distill]         outer.outer_step: one θ_0 draw per step (bert.fresh_model)
    Eq. 6    L_attn = mean KL(ã ‖ a(θ))                  unroll.attention_kl, of bert_forward's [CLS] scores
    Eq. 7    θ_{t+1} = θ_t − η̃ ∇(L_task + λ L_attn)      unroll.inner_losses + unroll.sgd_step
    ∇_D̃ L_distill through the T steps                  unroll.hypergradient ("graph", or "recompute": memory
                                                         flat in T, the same gradient)

Algorithm 1, line by line:

    1–2     D̃ = {(x̃_i, ỹ_i, ã_i)}, η̃ ← η̃_0            distilled.DistilledData.initial (outer.init_from_real,
                                                         outer.init_attention_from_model: optional starts)
    3       for outer step s = 1..S                      outer.algorithm_1
    4       θ_0 ~ p(θ_0)                                 bert.fresh_model (pretrained + a new head, seeds.py)
    5–7     the t-th distilled mini-batch                distilled.DistilledData.step_indices / targets
    8–9     L_task, L_attn                               unroll.inner_losses
    10–11   θ_{t+1} = θ_t − η̃ ∇(L_task + λ L_attn)      unroll.sgd_step
    13      (x_s, y_s) ~ D                               the caller's real_batch(s) (distill.py)
    14–15   D̃ ← D̃ − α ∇_D̃ L(x_s, y_s, θ_T)            outer.outer_step (Adam, warmup + decay, clipping)
    after   N fresh models trained on D̃, scored         evaluation.evaluate_distilled (Sec. 3.1)

The modules: bert.py (BERT as a pure function of its parameters, attention probabilities exposed),
attention.py and layers.py (twice-differentiable attention, Linear and LayerNorm), kernels.py (the same
maths cut into CPU- or GPU-shaped operators), distilled.py, unroll.py, outer.py, evaluation.py, seeds.py.
"""
