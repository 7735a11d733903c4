"""The single-rank engine (actors/plain_engine.py): DeepSpeed's interface over a plain PyTorch step. Its step is
clip + AdamW + zero_grad, its grad norm the pre-clip one, its checkpoint restores weights and optimizer state."""

from __future__ import annotations

import torch

from actors.plain_engine import PlainEngine


def model_and_optimizer(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    return model, torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.9, 0.95))


def loss_of(model) -> torch.Tensor:
    x = torch.linspace(-1, 1, 12, dtype=torch.float64).view(3, 4)
    return (model(x) ** 2).sum() * 10  # large enough that clipping at 0.5 acts


def test_a_step_is_clip_then_adamw_and_the_norm_is_taken_before_clipping():
    model, optimizer = model_and_optimizer()
    engine = PlainEngine(model, optimizer, max_grad_norm=0.5)
    reference, reference_optimizer = model_and_optimizer()
    engine.backward(loss_of(engine))
    engine.step()
    loss_of(reference).backward()
    norm = torch.sqrt(sum((p.grad ** 2).sum() for p in reference.parameters()))
    for p in reference.parameters():
        p.grad.mul_(min(1.0, 0.5 / (float(norm) + 1e-6)))
    reference_optimizer.step()
    assert engine.get_global_grad_norm() == float(norm) and float(norm) > 0.5
    assert all(torch.allclose(a, b, rtol=1e-12, atol=0) for a, b in zip(model.parameters(), reference.parameters()))
    assert all(p.grad is None for p in model.parameters())  # cleared, as DeepSpeed's step leaves them


def test_a_checkpoint_restores_weights_and_optimizer_state(tmp_path):
    model, optimizer = model_and_optimizer()
    engine = PlainEngine(model, optimizer, max_grad_norm=0.5)
    engine.backward(loss_of(engine))
    engine.step()
    engine.save_checkpoint(str(tmp_path), "zero")
    saved = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):
        engine.backward(loss_of(engine))
        engine.step()
    moved = [p.detach().clone() for p in model.parameters()]
    path, client = engine.load_checkpoint(str(tmp_path), "zero")
    assert path.endswith("zero/plain_engine.pt") and client == {}
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), saved))
    # The same next two steps from the restored state land on the same weights (Adam's moments came back too).
    for _ in range(2):
        engine.backward(loss_of(engine))
        engine.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), moved))
    assert engine.load_checkpoint(str(tmp_path / "none"), "zero") == (None, {})


def test_a_checkpoint_is_on_disk_under_its_name_with_no_temp_file_left(tmp_path, fsynced):
    """torch.save writes the temp file; its data is synced before the rename, the folder holding the name after."""
    model, optimizer = model_and_optimizer()
    PlainEngine(model, optimizer, max_grad_norm=0.5).save_checkpoint(str(tmp_path), "zero")
    folder = tmp_path / "zero"
    assert [p.name for p in folder.iterdir()] == ["plain_engine.pt"]
    assert fsynced == [(folder / "plain_engine.pt").stat().st_ino, folder.stat().st_ino]


def test_accumulation_steps_at_each_boundary_with_the_schedule_and_keeps_the_client_state(tmp_path):
    """grad_accum = 2 (a Ray Train rank): each backward is scaled by 1/2 and only every second step() updates and
    advances the learning-rate schedule, as DeepSpeed's engine does."""
    model, optimizer = model_and_optimizer()
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    engine = PlainEngine(model, optimizer, max_grad_norm=1e9, grad_accum=2, scheduler=schedule)
    reference, reference_optimizer = model_and_optimizer()
    reference_schedule = torch.optim.lr_scheduler.LambdaLR(reference_optimizer, lambda step: 1.0 / (step + 1))
    before = [p.detach().clone() for p in model.parameters()]
    engine.backward(loss_of(engine))
    engine.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before)) and engine.get_lr() == [0.1]
    engine.backward(loss_of(engine))
    engine.step()
    (loss_of(reference) / 2 + loss_of(reference) / 2).backward()
    reference_optimizer.step()
    reference_schedule.step()
    assert all(torch.allclose(a, b, rtol=1e-12, atol=0) for a, b in zip(model.parameters(), reference.parameters()))
    assert engine.get_lr() == [0.05] == reference_schedule.get_last_lr()
    engine.save_checkpoint(str(tmp_path), "zero", client_state={"progress": {"step": 1}})
    fresh_model, fresh_optimizer = model_and_optimizer(seed=1)
    fresh_schedule = torch.optim.lr_scheduler.LambdaLR(fresh_optimizer, lambda step: 1.0 / (step + 1))
    fresh = PlainEngine(fresh_model, fresh_optimizer, 1e9, grad_accum=2, scheduler=fresh_schedule)
    _, client = fresh.load_checkpoint(str(tmp_path), "zero")
    assert client == {"progress": {"step": 1}} and fresh.get_lr() == [0.05] and fresh.micro_steps == 2
