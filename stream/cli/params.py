"""Option types shared by the commands (faust's ``cli/params.py``): a name is checked
when the command line is parsed, before any work (training, reading a file) starts."""

from __future__ import annotations

from typing import Any

import click

from models.names import TENANT_RULE, is_tenant


class TenantName(click.ParamType):
    name = "tenant"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if not is_tenant(value):
            self.fail(f"{value!r} is not a tenant name: it {TENANT_RULE}", param, ctx)
        return str(value)


TENANT = TenantName()
