"""The AdminService servicer: API keys over gRPC and REST (`/api/admin/keys...`).

Only admin keys reach it (the interceptor refuses the others). Each method maps protobuf
to the KeyStore and back; a secret appears once, in CreateKey's answer. Each `XxxHttp`
method is the REST door of `Xxx`: the same answer as JSON the server writes
(contract/json_codec), where a limit that does not apply is left out instead of reading 0.
"""

from __future__ import annotations

from collections.abc import Container
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from aigne.hub.v1 import admin_service_pb2 as pb
from aigne.hub.v1 import admin_service_pb2_grpc as pb_grpc
from service.accounting.keys import ApiKey, KeyLimits, KeyStore
from service.accounting.quotas import Quotas
from service.contract import json_codec

DEFAULT_PAGE_SIZE = 100
# Limits whose 0 or empty list means "no limit": left out of REST answers. Counts
# (images_today) and flags (admin) mean what they say at 0 and false, and stay.
NO_LIMIT_WHEN_EMPTY = frozenset(f"{pb.KeyLimits.DESCRIPTOR.full_name}.{name}" for name in (
    "allowed_models", "daily_image_quota", "monthly_image_quota", "requests_per_minute"))


class AdminServicer(pb_grpc.AdminServiceServicer):
    def __init__(self, *, keys: KeyStore, quotas: Quotas, models: Container[str]) -> None:
        self._keys = keys
        self._quotas = quotas
        self._models = models

    async def CreateKey(self, request: pb.CreateKeyRequest,
                        context: object) -> pb.CreateKeyResponse:
        limits = limits_of(request.limits).checked(self._models)
        key, secret = await self._keys.create(request.name, admin=request.admin,
                                              source="api", limits=limits)
        return pb.CreateKeyResponse(key=(await self._views([key]))[0], secret=secret)

    async def ListKeys(self, request: pb.ListKeysRequest, context: object) -> pb.ListKeysResponse:
        keys, next_token = await self._keys.list(request.page_size or DEFAULT_PAGE_SIZE,
                                                 request.page_token)
        return pb.ListKeysResponse(keys=await self._views(keys), next_page_token=next_token)

    async def GetKey(self, request: pb.GetKeyRequest, context: object) -> pb.GetKeyResponse:
        key = await self._keys.get(request.key_id)
        return pb.GetKeyResponse(key=(await self._views([key]))[0])

    async def SetKeyLimits(self, request: pb.SetKeyLimitsRequest,
                           context: object) -> pb.SetKeyLimitsResponse:
        limits = limits_of(request.limits).checked(self._models)
        key = await self._keys.set_limits(request.key_id, limits)
        return pb.SetKeyLimitsResponse(key=(await self._views([key]))[0])

    async def RevokeKey(self, request: pb.RevokeKeyRequest,
                        context: object) -> pb.RevokeKeyResponse:
        key = await self._keys.revoke(request.key_id)
        return pb.RevokeKeyResponse(key=(await self._views([key]))[0])

    CreateKeyHttp = json_codec.rest_door(CreateKey, NO_LIMIT_WHEN_EMPTY)
    ListKeysHttp = json_codec.rest_door(ListKeys, NO_LIMIT_WHEN_EMPTY)
    GetKeyHttp = json_codec.rest_door(GetKey, NO_LIMIT_WHEN_EMPTY)
    SetKeyLimitsHttp = json_codec.rest_door(SetKeyLimits, NO_LIMIT_WHEN_EMPTY)
    RevokeKeyHttp = json_codec.rest_door(RevokeKey, NO_LIMIT_WHEN_EMPTY)

    async def _views(self, keys: list[ApiKey]) -> list[pb.ApiKey]:
        used = await self._quotas.used([key.id for key in keys])
        return [key_view(key, *used[key.id]) for key in keys]


def limits_of(message: pb.KeyLimits) -> KeyLimits:
    """KeyLimits from their protobuf form, where 0 and empty mean "no limit"."""
    return KeyLimits(
        allowed_models=tuple(message.allowed_models) or None,
        daily_image_quota=message.daily_image_quota or None,
        monthly_image_quota=message.monthly_image_quota or None,
        requests_per_minute=message.requests_per_minute or None,
        expires_at=message.expire_time.ToDatetime(tzinfo=UTC)
        if message.HasField("expire_time") else None,
    )


def key_view(key: ApiKey, images_today: int, images_this_month: int) -> pb.ApiKey:
    limits = key.limits
    return pb.ApiKey(
        id=key.id, name=key.name, prefix=key.prefix, admin=key.admin, source=key.source,
        create_time=_timestamp(key.created_at),
        revoke_time=_timestamp(key.revoked_at) if key.revoked_at else None,
        limits=pb.KeyLimits(
            allowed_models=limits.allowed_models or (),
            daily_image_quota=limits.daily_image_quota or 0,
            monthly_image_quota=limits.monthly_image_quota or 0,
            requests_per_minute=limits.requests_per_minute or 0,
            expire_time=_timestamp(limits.expires_at) if limits.expires_at else None),
        images_today=images_today, images_this_month=images_this_month)


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp
