"""The names an asset's parts carry inside its files (objects, meshes, materials, images), derived from
the file stem so that an imported asset is recognisable in a DCC tool's outliner."""

from __future__ import annotations

import re
from dataclasses import dataclass

from dreamsmith.exporters.options import Material


def identifier(name: str) -> str:
    """``name`` as an identifier every format accepts (USD prim names are the strictest): ASCII letters,
    digits and ``_``, not starting with a digit; every other character becomes ``_``."""
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"_{cleaned}"


@dataclass(frozen=True)
class AssetNames:
    """Names of one exported file's parts."""

    object: str
    """The node / object / root prim (the file stem as an identifier)."""
    mesh: str
    """The mesh (glTF mesh, USD Mesh prim)."""
    material: str
    """The material."""
    image: str
    """The base-colour image (as its file is named: ``<stem>_basecolor``)."""

    @classmethod
    def of(cls, stem: str, material: Material) -> AssetNames:
        """The names of the file ``<stem>.<format>``; ``material.name``, when given, names the material."""
        base = identifier(stem)
        mesh = f"{base}_mesh"
        material_name = identifier(material.name or f"{base}_material")
        if material_name == mesh:  # both are children of the root prim in USD
            material_name = f"{material_name}_material"
        return cls(object=base, mesh=mesh, material=material_name, image=f"{base}_basecolor")
