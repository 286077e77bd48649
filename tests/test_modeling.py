import pytest
import torch
from conftest import GENES, LABELS, make_tiny_model
from transformers import AutoConfig, AutoModel

from configuration_scinterpreter import ScInterpreterInputError
from modeling_scinterpreter import ScInterpreterForCellAnnotation, ScInterpreterModel
from processing_scinterpreter import ScInterpreterProcessor

TRAINABLE_PREFIXES = ("model.projector.", "model.class_token", "head.")


def batch(processor, counts):
    return dict(processor(counts, gene_names=GENES))


def test_outputs_are_typed_and_shaped(tiny_model, processor, counts):
    out = tiny_model(**batch(processor, counts), labels=torch.zeros(len(counts), dtype=torch.long))
    assert out.logits.shape == (len(counts), len(LABELS))
    assert out.cell_embeddings.shape == (len(counts), 32)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)


def test_base_model_returns_cell_embeddings_and_hidden_states(tiny_model, processor, counts):
    out = tiny_model.model(**batch(processor, counts), output_hidden_states=True)
    assert out.cell_embeddings.shape == (len(counts), 32)
    assert len(out.hidden_states) == tiny_model.config.text_config.num_hidden_layers + 1


def test_reused_instruction_cache_matches_a_full_forward_pass(tiny_model, processor, counts):
    inputs = batch(processor, counts[:3])
    inputs["gene_mask"][1, 5:] = 0
    out = tiny_model.model(**inputs)
    model = tiny_model.model
    instruction = torch.tensor([tiny_model.config.instruction_token_ids])
    for i in range(3):
        n = int(inputs["gene_mask"][i].sum())
        soft = model.get_gene_features(inputs["gene_ids"][i : i + 1, :n], inputs["gene_values"][i : i + 1, :n])
        embeds = torch.cat([model.language_model.embed_tokens(instruction), soft, model.class_token[None, None]], 1)
        expected = model.language_model(inputs_embeds=embeds).last_hidden_state[0, -1]
        torch.testing.assert_close(out.cell_embeddings[i], expected, atol=1e-5, rtol=1e-5)


def test_a_cell_gets_the_same_logits_alone_or_in_a_padded_batch(tiny_model, processor, counts):
    inputs = batch(processor, counts[:4])
    inputs["gene_mask"][0, 3:] = 0
    together = tiny_model(**inputs).logits
    alone = tiny_model(**{k: v[:1] for k, v in inputs.items()}).logits
    torch.testing.assert_close(together[:1], alone, atol=1e-5, rtol=1e-5)


def test_only_projector_class_token_and_head_are_trainable(tiny_model):
    trainable = [name for name, p in tiny_model.named_parameters() if p.requires_grad]
    assert trainable and all(name.startswith(TRAINABLE_PREFIXES) for name in trainable)
    assert "model.gene_embeddings" in dict(tiny_model.named_buffers())


def _snapshot(model):
    return {name: t.detach().clone() for name, t in [*model.named_parameters(), *model.named_buffers()]}


def test_training_steps_and_reload_change_only_projector_class_token_and_head(tmp_path, processor, counts):
    model = make_tiny_model().train()
    before = _snapshot(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    inputs = batch(processor, counts)
    labels = torch.arange(len(counts)) % len(LABELS)
    for _ in range(3):
        model(**inputs, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = _snapshot(model)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {name for name in before if name.startswith(TRAINABLE_PREFIXES)}

    model.save_pretrained(tmp_path)
    reloaded = ScInterpreterForCellAnnotation.from_pretrained(tmp_path)
    for name, tensor in _snapshot(reloaded).items():
        assert torch.equal(tensor, after[name]), name
    assert [n for n, p in reloaded.named_parameters() if p.requires_grad] == [
        n for n, p in model.named_parameters() if p.requires_grad
    ]


def test_auto_model_loads_the_annotation_model_with_its_gene_table(saved_tiny_model, tiny_model, processor, counts):
    config = AutoConfig.from_pretrained(saved_tiny_model, trust_remote_code=True)
    assert config.model_type == "scinterpreter"
    loaded = AutoModel.from_pretrained(saved_tiny_model, trust_remote_code=True).eval()
    assert type(loaded).__name__ == "ScInterpreterForCellAnnotation"
    torch.testing.assert_close(loaded.model.gene_embeddings, tiny_model.model.gene_embeddings, atol=0, rtol=0)
    inputs = batch(processor, counts)
    torch.testing.assert_close(loaded(**inputs).logits, tiny_model(**inputs).logits, atol=1e-5, rtol=1e-5)


def test_backbone_dtype_changes_only_the_backbone(tiny_model):
    tiny_model.set_backbone_dtype(torch.bfloat16)
    assert tiny_model.model.backbone_dtype == torch.bfloat16
    assert tiny_model.model.projector.linear_1.weight.dtype == torch.float32
    assert tiny_model.head.dense.weight.dtype == torch.float32
    assert tiny_model.model.gene_embeddings.dtype == torch.float32


def test_base_model_alone_has_no_head():
    model = ScInterpreterModel(make_tiny_model().config)
    assert not hasattr(model, "head")


@pytest.mark.parametrize("n_top_genes", [1, 8])
def test_cells_with_no_expressed_gene_still_get_logits(tiny_model, n_top_genes):
    ids = torch.zeros(2, n_top_genes, dtype=torch.long)
    out = tiny_model(gene_ids=ids, gene_values=torch.zeros(2, n_top_genes), gene_mask=torch.zeros_like(ids))
    assert torch.isfinite(out.logits).all()


def test_soft_tokens_are_rescaled_to_the_configured_rms(processor, counts):
    model = make_tiny_model(soft_token_rms=0.14)
    inputs = batch(processor, counts)
    soft = model.model.get_gene_features(inputs["gene_ids"], inputs["gene_values"])
    torch.testing.assert_close(soft.pow(2).mean(-1).sqrt(), torch.full(soft.shape[:2], 0.14), atol=1e-4, rtol=0)


def test_gene_offsets_start_at_zero_and_train_only_the_genes_seen(processor, counts):
    plain, with_offsets = make_tiny_model(), make_tiny_model(gene_offsets=True)
    missing, unexpected = with_offsets.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["model.gene_offsets.weight"] and not unexpected
    inputs = batch(processor, counts)
    torch.testing.assert_close(with_offsets(**inputs).logits, plain(**inputs).logits, atol=0, rtol=0)

    trainable = {name for name, p in with_offsets.named_parameters() if p.requires_grad}
    assert "model.gene_offsets.weight" in trainable
    optimizer = torch.optim.SGD([p for p in with_offsets.parameters() if p.requires_grad], lr=0.1)
    with_offsets.train()(**inputs, labels=torch.zeros(len(counts), dtype=torch.long)).loss.backward()
    optimizer.step()
    moved = with_offsets.model.gene_offsets.weight.detach().abs().sum(-1) > 0
    seen = torch.zeros(len(GENES), dtype=torch.bool)
    seen[inputs["gene_ids"][inputs["gene_mask"].bool()]] = True
    assert moved.any() and not (moved & ~seen).any()


def test_mean_pooling_skips_the_backbone(processor, counts, monkeypatch):
    model = make_tiny_model(cell_pooling="mean")

    def no_backbone(*args, **kwargs):
        raise AssertionError("the backbone ran")

    monkeypatch.setattr(model.model.language_model, "forward", no_backbone)
    inputs = batch(processor, counts)
    out = model(**inputs)
    soft = model.model.get_gene_features(inputs["gene_ids"], inputs["gene_values"])
    mask = inputs["gene_mask"].float()[..., None]
    torch.testing.assert_close(out.cell_embeddings, (soft * mask).sum(1) / mask.sum(1), atol=1e-6, rtol=0)


def test_class_token_and_mean_pooling_appends_the_mean_over_the_cells_genes(processor, counts, tmp_path):
    plain, both = make_tiny_model(seed=0), make_tiny_model(seed=0, cell_pooling="class_token_and_mean")
    both.model.load_state_dict(plain.model.state_dict())
    inputs = batch(processor, counts)
    inputs["gene_mask"][0, 3:] = 0  # a cell with 3 genes: its padding must not enter the mean
    plain_out = plain.model(**inputs)
    out = both(**inputs, output_hidden_states=False)
    hidden = plain_out.last_hidden_state.float()
    size = plain.config.text_config.hidden_size
    assert out.cell_embeddings.shape == (len(counts), 2 * size)
    torch.testing.assert_close(out.cell_embeddings[:, :size], plain_out.cell_embeddings, atol=0, rtol=0)
    n_real = inputs["gene_mask"].sum(-1)
    for cell in (0, 1):
        torch.testing.assert_close(out.cell_embeddings[cell, size:], hidden[cell, : n_real[cell]].mean(0),
                                   atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="cell_embeddings have 32 values per cell, but this model's cell embeddings"):
        both.set_cell_type_centroids(plain_out.cell_embeddings, torch.arange(len(counts)) % both.config.num_labels)
    both.set_cell_type_centroids(out.cell_embeddings.detach(), torch.arange(len(counts)) % both.config.num_labels)
    both.save_pretrained(tmp_path)
    reloaded = type(both).from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded(**inputs).logits, both(**inputs).logits, atol=1e-6, rtol=1e-6)


def test_lora_adapters_start_at_the_frozen_model_and_train_with_the_projector(processor, counts):
    plain, adapted = make_tiny_model(seed=0), make_tiny_model(seed=0, lora_rank=4)
    adapted.model.load_backbone_weights(plain.model.language_model.state_dict())
    adapted.load_state_dict({k: v for k, v in plain.state_dict().items()}, strict=False)
    inputs = batch(processor, counts)
    torch.testing.assert_close(adapted(**inputs).logits, plain(**inputs).logits, atol=1e-6, rtol=1e-6)
    trainable = {name for name, p in adapted.named_parameters() if p.requires_grad}
    lora = {name for name in trainable if ".lora_" in name}
    n_layers = adapted.config.text_config.num_hidden_layers
    assert len(lora) == 2 * 2 * n_layers  # A and B on q_proj and v_proj of every layer
    assert all(name.startswith(TRAINABLE_PREFIXES) for name in trainable - lora)


def test_lora_adapters_stay_float32_in_a_bfloat16_backbone_and_reload(tmp_path, processor, counts):
    model = make_tiny_model(lora_rank=4)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)
    model.set_backbone_dtype(torch.bfloat16)
    q_proj = model.model.language_model.layers[0].self_attn.q_proj
    assert q_proj.weight.dtype == torch.bfloat16 and q_proj.lora_A.dtype == torch.float32
    model.save_pretrained(tmp_path)
    reloaded = ScInterpreterForCellAnnotation.from_pretrained(tmp_path).set_backbone_dtype(torch.bfloat16).eval()
    inputs = batch(processor, counts)
    torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits, atol=1e-5, rtol=1e-5)
    assert reloaded.model.language_model.layers[0].self_attn.q_proj.lora_B.requires_grad


def test_gene_attributions_are_the_logit_drop_when_one_gene_is_left_out(tiny_model, processor, counts):
    inputs = batch(processor, counts[:3])
    inputs["gene_mask"][2, 5:] = 0  # a cell with only 5 genes
    attributions = tiny_model.gene_attributions(**inputs)
    assert attributions.shape == inputs["gene_ids"].shape and (attributions[2, 5:] == 0).all()
    full = tiny_model(**inputs).logits
    cell, gene = 1, 3
    kept = [i for i in range(inputs["gene_ids"].shape[1]) if i != gene]
    one = {name: tensor[cell : cell + 1, kept] for name, tensor in inputs.items()}
    without = tiny_model(**one).logits
    target = full[cell].argmax()
    torch.testing.assert_close(attributions[cell, gene], full[cell, target] - without[0, target], atol=1e-5, rtol=1e-5)


def test_gene_dropout_leaves_genes_out_in_training_only(processor, counts):
    model = make_tiny_model(gene_dropout=0.5, head_dropout=0.0)  # the only randomness in training mode
    inputs = batch(processor, counts)
    reference = make_tiny_model(head_dropout=0.0)
    torch.testing.assert_close(model(**inputs).logits, reference(**inputs).logits)  # eval: no effect

    torch.manual_seed(0)
    ids, values, mask = model.model.drop_genes(inputs["gene_ids"], inputs["gene_values"], inputs["gene_mask"])
    real = inputs["gene_mask"].bool()
    kept = mask.bool()
    assert kept.sum() < real.sum() and (kept.sum(1) >= 1).all()
    assert (kept.long().diff(dim=1) <= 0).all()  # kept genes first
    for row in range(len(ids)):
        original = inputs["gene_ids"][row][real[row]].tolist()
        survivors = ids[row][kept[row]].tolist()
        assert survivors[0] == original[0]
        assert survivors == [gene for gene in original if gene in survivors]  # order kept
        pairs = dict(zip(inputs["gene_ids"][row].tolist(), inputs["gene_values"][row].tolist()))
        assert all(pairs[gene] == value for gene, value in zip(survivors, values[row][kept[row]].tolist()))

    model.train()
    torch.manual_seed(1)
    first = model(**inputs).logits
    torch.manual_seed(2)
    assert not torch.allclose(first, model(**inputs).logits)


def _with_centroids(model, processor, counts):
    """`model` with centroids from the cells of `counts`, labelled in turn; returns the cells' embeddings."""
    embeddings = model(**batch(processor, counts)).cell_embeddings.detach()
    model.set_cell_type_centroids(embeddings, torch.arange(len(counts)) % len(LABELS))
    return embeddings


def test_cell_type_centroids_are_the_mean_unit_embedding_of_each_type(tiny_model):
    embeddings = torch.tensor([[3.0, 0.0], [0.0, 2.0], [0.0, -5.0], [1.0, 1.0]]).repeat(1, 16)
    tiny_model.set_cell_type_centroids(embeddings, torch.tensor([0, 0, 1, -100]))
    unit = torch.nn.functional.normalize(embeddings, dim=-1)
    expected = torch.stack([unit[:2].mean(0), unit[2], torch.zeros(32)])  # "t_cell" has no cells: zero
    torch.testing.assert_close(tiny_model.cell_type_centroids, expected)
    assert tiny_model.config.cell_type_centroids


def test_centroid_distance_is_larger_far_from_every_centroid_than_at_one(tiny_model):
    centroids = torch.eye(3, 32)
    tiny_model.set_cell_type_centroids(centroids, torch.arange(3))
    at_centroid, between, far = 2.5 * centroids[1], centroids[0] + centroids[2], -centroids.sum(0)
    distance = tiny_model.centroid_distance(torch.stack([at_centroid, between, far]))
    assert distance[0] == pytest.approx(0.0, abs=1e-6) and 0 < distance[1] < distance[2]
    tiny_model.config.unassigned_score = "centroid_distance"  # confidence: the similarity, 1 - distance
    confidence = tiny_model.confidence(torch.zeros(3, 3), torch.stack([at_centroid, between, far]))
    torch.testing.assert_close(confidence, 1 - distance)


def test_the_combined_confidence_is_under_the_threshold_when_either_score_is_under_its_own(tiny_model):
    from processing_scinterpreter import ScInterpreterInputError

    centroids = torch.eye(3, 32)
    tiny_model.set_cell_type_centroids(centroids, torch.arange(3))
    config = tiny_model.config
    config.unassigned_score = "max_probability_and_centroid_distance"
    embeddings = torch.stack([centroids[0], centroids[0] + centroids[1], centroids[2], -centroids.sum(0)])
    logits = torch.tensor([[4.0, 0, 0], [4.0, 0, 0], [0.1, 0, 0], [4.0, 0, 0]])  # sure, sure, unsure, sure
    with pytest.raises(ScInterpreterInputError, match="needs both fitted thresholds"):
        tiny_model.confidence(logits, embeddings)
    with pytest.raises(ScInterpreterInputError, match="needs the cells' cell_embeddings"):
        tiny_model.confidence(logits)
    config.unassigned_threshold, config.centroid_similarity_threshold = 0.5, 0.8
    probability = logits.softmax(-1).max(-1).values
    similarity = 1 - tiny_model.centroid_distance(embeddings)
    confidence = tiny_model.confidence(logits, embeddings)
    # at a centroid and sure; sure but between two types (similarity .71); at a centroid but unsure; far and sure
    assert (confidence < 0.5).tolist() == [False, True, True, True]
    assert ((confidence < 0.5) == ((probability < 0.5) | (similarity < 0.8))).all()
    torch.testing.assert_close(confidence, torch.minimum(probability, similarity - 0.3))


def test_cell_type_centroids_are_saved_in_the_weights_and_load_again(tmp_path, tiny_model, processor, counts):
    from safetensors import safe_open

    embeddings = _with_centroids(tiny_model, processor, counts)
    tiny_model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", framework="pt") as handle:
        assert list(handle.get_slice("cell_type_centroids").get_shape()) == [len(LABELS), 32]
    reloaded = ScInterpreterForCellAnnotation.from_pretrained(tmp_path)
    assert reloaded.config.cell_type_centroids and reloaded.cell_type_centroids.dtype == torch.float32
    torch.testing.assert_close(reloaded.cell_type_centroids, tiny_model.cell_type_centroids, atol=0, rtol=0)
    torch.testing.assert_close(reloaded.centroid_distance(embeddings), tiny_model.centroid_distance(embeddings))


def test_a_folder_saved_without_centroids_loads_as_before(tmp_path, tiny_model, processor, counts):
    import json

    from configuration_scinterpreter import ScInterpreterInputError
    from safetensors import safe_open

    tiny_model.save_pretrained(tmp_path)
    # Folders written before centroids were stored have neither the config field nor the tensor.
    config = json.loads((tmp_path / "config.json").read_text())
    del config["cell_type_centroids"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with safe_open(tmp_path / "model.safetensors", framework="pt") as handle:
        assert "cell_type_centroids" not in handle.keys()
    reloaded = ScInterpreterForCellAnnotation.from_pretrained(tmp_path)
    assert reloaded.cell_type_centroids is None and not reloaded.config.cell_type_centroids
    inputs = batch(processor, counts)
    torch.testing.assert_close(reloaded(**inputs).logits, tiny_model(**inputs).logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(ScInterpreterInputError, match="holds none"):
        reloaded.centroid_distance(reloaded(**inputs).cell_embeddings)


def test_linear_gene_scores_add_a_linear_read_of_the_chosen_genes_to_the_logits(processor, counts):
    plain, linear = make_tiny_model(), make_tiny_model(linear_gene_scores=True)
    inputs = batch(processor, counts)
    # Zero until fitted, so that the head trains on its own logits.
    torch.testing.assert_close(linear(**inputs).logits, plain(**inputs).logits, rtol=0, atol=0)
    torch.manual_seed(3)
    weights, bias = torch.randn(len(GENES), len(LABELS)), torch.randn(len(LABELS))
    linear.set_linear_gene_scores(weights, bias)
    mask = inputs["gene_mask"].float()
    expected = ((inputs["gene_values"] * mask)[..., None] * weights[inputs["gene_ids"]]).sum(1) + bias
    torch.testing.assert_close(linear.linear_gene_scores(**inputs), expected)
    torch.testing.assert_close(linear(**inputs).logits, plain(**inputs).logits + expected)
    # Padding carries no score, whatever gene id and value it holds.
    padded = {name: tensor.clone() for name, tensor in inputs.items()}
    padded["gene_mask"][:, -1], padded["gene_ids"][:, -1], padded["gene_values"][:, -1] = 0, 7, 5.0
    unpadded = {**padded, "gene_values": padded["gene_values"].clone()}
    unpadded["gene_values"][:, -1] = 0.0
    torch.testing.assert_close(linear.linear_gene_scores(**padded), linear.linear_gene_scores(**unpadded))
    with pytest.raises(ValueError, match="must have shapes"):
        linear.set_linear_gene_scores(weights[:5], bias)
    with pytest.raises(ScInterpreterInputError, match="no linear gene scores"):
        plain.linear_gene_scores(**inputs)


def test_linear_gene_scores_are_saved_in_the_weights_and_load_again(tmp_path, processor, counts):
    model = make_tiny_model(linear_gene_scores=True)
    model.set_linear_gene_scores(torch.randn(len(GENES), len(LABELS)), torch.randn(len(LABELS)))
    model.save_pretrained(tmp_path)
    reloaded = ScInterpreterForCellAnnotation.from_pretrained(tmp_path).eval()
    assert reloaded.config.linear_gene_scores and reloaded.gene_score_weights.dtype == torch.float32
    inputs = batch(processor, counts)
    torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits)



def test_a_folder_saved_before_linear_gene_scores_loads_as_before(tmp_path, tiny_model, processor, counts):
    import json

    tiny_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["linear_gene_scores"]  # folders written before the field existed
    (tmp_path / "config.json").write_text(json.dumps(config))
    reloaded = ScInterpreterForCellAnnotation.from_pretrained(tmp_path).eval()
    assert reloaded.gene_score_weights is None and not reloaded.config.linear_gene_scores
    inputs = batch(processor, counts)
    torch.testing.assert_close(reloaded(**inputs).logits, tiny_model(**inputs).logits)


def test_linear_gene_scores_read_the_longer_gene_list_where_the_processor_gives_one(counts):
    extended = ScInterpreterProcessor(gene_vocab=GENES, n_top_genes=8, n_linear_genes=20)
    model = make_tiny_model(linear_gene_scores=True)
    torch.manual_seed(4)
    weights, bias = torch.randn(len(GENES), len(LABELS)), torch.randn(len(LABELS))
    model.set_linear_gene_scores(weights, bias)
    inputs = batch(extended, counts)
    tokens_only = {name: tensor for name, tensor in inputs.items() if not name.startswith("linear_")}
    mask = inputs["linear_gene_mask"].float()
    expected = ((inputs["linear_gene_values"] * mask)[..., None] * weights[inputs["linear_gene_ids"]]).sum(1) + bias
    torch.testing.assert_close(model.linear_gene_scores(**inputs), expected)
    head = model(**tokens_only).logits - model.linear_gene_scores(**tokens_only)
    torch.testing.assert_close(model(**inputs).logits, head + expected)
    # Leaving a soft token's gene out removes it from the longer list too.
    attributions = model.gene_attributions(**inputs)
    cell, position = 0, 2
    gene = inputs["gene_ids"][cell, position]
    keep = torch.arange(8) != position
    without = {
        "gene_ids": torch.cat([inputs["gene_ids"][cell, keep], inputs["gene_ids"][cell, :1]])[None],
        "gene_values": torch.cat([inputs["gene_values"][cell, keep], inputs["gene_values"][cell, :1]])[None],
        "gene_mask": torch.cat([inputs["gene_mask"][cell, keep], torch.zeros(1, dtype=torch.long)])[None],
        "linear_gene_ids": inputs["linear_gene_ids"][cell][None],
        "linear_gene_values": inputs["linear_gene_values"][cell][None],
        "linear_gene_mask": (inputs["linear_gene_mask"][cell] * (inputs["linear_gene_ids"][cell] != gene))[None],
    }
    target = model(**inputs).logits[cell].argmax()
    drop = model(**inputs).logits[cell, target] - model(**without).logits[0, target]
    torch.testing.assert_close(attributions[cell, position], drop, atol=1e-5, rtol=1e-5)


def test_genes_only_the_linear_scores_read_are_attributed_their_exact_leave_one_out_drop(counts):
    extended = ScInterpreterProcessor(gene_vocab=GENES, n_top_genes=8, n_linear_genes=20)
    model = make_tiny_model(linear_gene_scores=True).eval()
    torch.manual_seed(6)
    model.set_linear_gene_scores(torch.randn(len(GENES), len(LABELS)), torch.randn(len(LABELS)))
    inputs = batch(extended, counts[:4])
    target = model(**inputs).logits.argmax(-1)
    attributions = model.linear_gene_attributions(**inputs, target=target)
    assert attributions.shape == inputs["linear_gene_ids"].shape
    torch.testing.assert_close(model.linear_gene_attributions(**inputs), attributions)  # target: the predicted label
    checked = 0
    for cell in range(4):
        tokens = inputs["gene_ids"][cell][inputs["gene_mask"][cell].bool()].tolist()
        for position, gene in enumerate(inputs["linear_gene_ids"][cell].tolist()):
            if not inputs["linear_gene_mask"][cell, position] or gene in tokens:
                assert attributions[cell, position] == 0  # padding, or a soft token (gene_attributions' gene)
                continue
            one = {name: tensor[cell : cell + 1].clone() for name, tensor in inputs.items()}
            one["linear_gene_mask"][0, position] = 0
            drop = model(**inputs).logits[cell, target[cell]] - model(**one).logits[0, target[cell]]
            torch.testing.assert_close(attributions[cell, position], drop, atol=1e-5, rtol=1e-5)
            checked += 1
    assert checked >= 4  # the longer lists did hold genes beyond the soft tokens
