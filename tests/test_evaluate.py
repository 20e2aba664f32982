import math

import torch

from harness.training.evaluate import evaluate, predict, score


def test_scores_from_known_logits():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 1, 1, 1, 2, 0])
    logits = torch.nn.functional.one_hot(predicted, 3).float() * 10
    scores = score(logits, labels, ["a", "b", "c"])
    assert math.isclose(scores.accuracy, 100 * 4 / 6)
    assert scores.per_class_accuracy == {"a": 50.0, "b": 100.0, "c": 50.0}
    assert scores.confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert scores.count == 6
    text = scores.format()
    assert "Accuracy of the network on the 6 test images: 66.67 %" in text
    assert "Accuracy of b : 100.0 %" in text


def test_missing_class_is_nan_not_zero():
    scores = score(torch.eye(3)[[0, 0]], torch.tensor([0, 0]), ["a", "b", "c"])
    assert scores.per_class_accuracy["a"] == 100.0
    assert math.isnan(scores.per_class_accuracy["b"])


def test_an_inference_function_replaces_the_forward_pass():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    images, labels = torch.randn(10, 3, 2, 2), torch.randint(0, 4, (10,))
    seen = []

    def negated(net, batch):
        seen.append((net.training, len(batch)))
        return -net(batch)

    plain = predict(model, images, 4)
    torch.testing.assert_close(predict(model, images, 4, infer=negated), -plain)
    assert seen == [(False, 4), (False, 4), (False, 2)]
    scores = evaluate(model, images, labels, list("abcd"), 4, infer=negated)
    assert scores.accuracy == score(-plain, labels, list("abcd")).accuracy


def test_batched_evaluation_matches_one_batch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    images, labels = torch.randn(50, 3, 2, 2), torch.randint(0, 4, (50,))
    whole = evaluate(model, images, labels, list("abcd"), batch_size=50)
    pieces = evaluate(model, images, labels, list("abcd"), batch_size=7)
    assert whole.accuracy == pieces.accuracy
    assert math.isclose(whole.loss, pieces.loss, rel_tol=1e-5)
    assert torch.equal(whole.confusion, pieces.confusion)
