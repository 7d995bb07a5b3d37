"""The boxes the ops benchmark feeds NMS and RoIAlign, from friendly to adversarial.

A trained detector's boxes cluster around objects; random boxes flatter an NMS. The NMS workloads, IoU 0.7
unless stated:
  * proposals: 1k / 5k / 20k jittered copies of objects of 16 .. 640 px (25 boxes per object), random scores;
  * a trained RPN's output: 5,000 boxes jittered around 8 objects;
  * 10,000 boxes in 5 tight clusters; 4,000 identical boxes;
  * 20,000 boxes spread at random (most are kept);
  * per-class detection NMS: batched_nms of 3,000 boxes around 60 objects in 90 classes, IoU 0.5;
  * the worst case of our algorithm: a suppression chain of 2,000 boxes, each overlapping the next (IoU 0.9).
RoIAlign's RoIs are proposal-like boxes too (`proposal_boxes`, 4 per object).
"""
import torch

IMAGE = (800, 1344)  # (height, width)


def proposal_boxes(n: int, seed: int, image=IMAGE, per_object: int = 25) -> torch.Tensor:
    """(n, 4) xyxy boxes clustered around n // per_object objects of 16 .. 640 px, clipped to the image."""
    g = torch.Generator().manual_seed(seed)
    height, width = image
    objects = max(1, n // per_object)
    centre = torch.rand(objects, 2, generator=g) * torch.tensor([width, height], dtype=torch.float32)
    side = torch.exp(torch.empty(objects).uniform_(2.77, 6.46, generator=g))  # 16 .. 640 px
    ratio = torch.exp(torch.empty(objects).uniform_(-0.69, 0.69, generator=g))  # h / w in 1/2 .. 2
    size = torch.stack((side / ratio.sqrt(), side * ratio.sqrt()), dim=1)
    which = torch.randint(0, objects, (n,), generator=g)
    jitter_c = torch.randn(n, 2, generator=g) * size[which] * 0.1
    jitter_s = torch.exp(torch.randn(n, 2, generator=g) * 0.1)
    c, s = centre[which] + jitter_c, size[which] * jitter_s
    boxes = torch.cat((c - s / 2, c + s / 2), dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return boxes


def jittered_boxes(n: int, objects: int, spread: float, seed: int, image=IMAGE) -> torch.Tensor:
    """(n, 4) boxes around `objects` objects of 20 .. 400 px, centre and size jittered by `spread` of the size."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(objects, 2, generator=g) * torch.tensor([image[1], image[0]], dtype=torch.float32)
    size = torch.exp(torch.empty(objects, 2).uniform_(3.0, 6.0, generator=g))
    which = torch.randint(0, objects, (n,), generator=g)
    c = centre[which] + torch.randn(n, 2, generator=g) * size[which] * spread
    s = size[which] * torch.exp(torch.randn(n, 2, generator=g) * spread)
    return torch.cat((c - s / 2, c + s / 2), dim=1)


def nms_cases(quick: bool):
    """(name, size, boxes, scores, idxs or None, IoU threshold) of each NMS workload."""
    g = torch.Generator().manual_seed(0)

    def scores(n):
        return torch.randperm(n, generator=g).float() / n  # distinct: torchvision orders tied scores arbitrarily

    if quick:
        return [("proposals", "200 boxes", proposal_boxes(200, 200), scores(200), None, 0.7),
                ("identical boxes", "300 boxes", torch.tensor([[10.0, 10.0, 90.0, 70.0]]).repeat(300, 1),
                 scores(300), None, 0.7)]
    xy = torch.rand(20000, 2, generator=g) * torch.tensor([IMAGE[1], IMAGE[0]], dtype=torch.float32)
    spread = torch.cat((xy, xy + torch.exp(torch.empty(20000, 2).uniform_(2.5, 5.5, generator=g))), dim=1)
    chain = torch.arange(2000, dtype=torch.float32)
    chain = torch.stack((chain, torch.zeros(2000), chain + 32, torch.full((2000,), 32.0)), dim=1)
    return [
        *[("proposals", f"{n} boxes", proposal_boxes(n, n), scores(n), None, 0.7) for n in (1000, 5000, 20000)],
        ("trained RPN: around 8 objects", "5000 boxes", jittered_boxes(5000, 8, 0.1, 1), scores(5000), None, 0.7),
        ("5 tight clusters", "10000 boxes", jittered_boxes(10000, 5, 0.02, 2), scores(10000), None, 0.7),
        ("identical boxes", "4000 boxes", torch.tensor([[100.0, 100.0, 300.0, 250.0]]).repeat(4000, 1),
         scores(4000), None, 0.7),
        ("random boxes", "20000 boxes", spread, scores(20000), None, 0.7),
        ("batched, 90 classes (IoU 0.5)", "3000 boxes", jittered_boxes(3000, 60, 0.15, 3), scores(3000),
         torch.randint(0, 90, (3000,), generator=g), 0.5),
        ("suppression chain (IoU 0.9)", "2000 boxes", chain, torch.linspace(1, 0, 2000), None, 0.9),
    ]
