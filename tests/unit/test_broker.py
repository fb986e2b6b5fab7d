"""StreamSubscription: FastStream's prefixed copy of a subscription, made without deepcopy."""

from faststream.redis import StreamSub

from libs.common.broker import StreamSubscription


def test_a_prefixed_subscription_is_a_copy_with_every_setting_and_the_prefixed_name() -> None:
    subscription = StreamSubscription(
        "operations:commands", group="executors", consumer="executor-1", max_records=1, polling_interval=250
    )

    prefixed = subscription.add_prefix("tenant-a:")

    assert prefixed is not subscription
    assert isinstance(prefixed, StreamSubscription)
    assert prefixed.name == "tenant-a:operations:commands"
    assert subscription.name == "operations:commands", "the original keeps its name"
    settings = StreamSub.__slots__  # every setting but the name
    assert {name: getattr(prefixed, name) for name in settings} == {
        name: getattr(subscription, name) for name in settings
    }
    reference = StreamSub(
        "operations:commands", group="executors", consumer="executor-1", max_records=1, polling_interval=250
    ).add_prefix("tenant-a:")
    assert {name: getattr(prefixed, name) for name in settings} == {name: getattr(reference, name) for name in settings}
    assert prefixed.name == reference.name
