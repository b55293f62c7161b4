"""Network doors: uplinks from LoRaWAN network servers (ChirpStack, The Things Stack), NB-IoT
(Lab5e Span) and MQTT gateways, each ending in the hub's one ingest pipeline (node/ingest.py).

    lorawan    LoRaWAN 1.0.x FRMPayload decryption and the join server's key envelope
    codecs     payload codecs the hub runs itself: Cayenne LPP and declarative byte layouts
    devices    enrolled LoRaWAN devices (DevEUI -> sensor) and join-server KEKs, keys wrapped
    uplink     one uplink -> decrypt -> decode -> the ingest pipeline
    events     the network servers' event formats (ChirpStack JSON/Protobuf, TTS, Span)
    mqtt       the hub's MQTT subscriptions: ordered, acknowledged after commit, reconnecting
    config     networks.toml in the data directory: which brokers and endpoints a hub uses
    doors      starting and stopping the subscriptions with the hub; the HTTP endpoints
"""
