"""usd-core's own validators run over a USDZ, whichever of them the installed usd-core has."""

from __future__ import annotations

from pathlib import Path

import pytest

_NO_SHADER_DEFINITION = "has invalid shader node"


def _shader_definitions_missing() -> bool:
    """Whether this usd-core wheel lacks the UsdPreviewSurface shader definitions (wheels before 26 ship
    none: OpenUSD issue 3983), so no checker can compare shader inputs with their declared types."""
    from pxr import Sdr, Tf

    try:
        return Sdr.Registry().GetShaderNodeByIdentifier("UsdPreviewSurface") is None
    except Tf.ErrorException:  # the failed discovery is reported once, as an exception
        return Sdr.Registry().GetShaderNodeByIdentifier("UsdPreviewSurface") is None


def _registered_validators() -> list:
    """Every validator of the ``UsdValidation`` registry that loads (some wheels list validators whose
    plugin libraries they do not ship); empty without ``UsdValidation`` (usd-core before 24.11)."""
    try:
        from pxr import Tf, UsdValidation
    except ImportError:
        return []
    registry = UsdValidation.ValidationRegistry()
    validators = []
    for metadata in registry.GetAllValidatorMetadata():
        try:
            validator = registry.GetOrLoadValidatorByName(metadata.name)
        except Tf.ErrorException:
            continue
        if validator is not None and not metadata.isSuite:
            validators.append(validator)
    return validators


def usd_validation_errors(path: Path) -> list[str]:
    """Errors usd-core finds in the USDZ at ``path``: ``UsdUtils.ComplianceChecker`` with the ARKit rules
    (usd-core before 26) and every validator in the ``UsdValidation`` registry (24.11 on), whichever
    this usd-core has. Skips the test when usd-core is missing or has neither."""
    pytest.importorskip("pxr", reason="usd-core (the usd extra) is not installed")
    from pxr import Usd, UsdUtils

    errors: list[str] = []
    no_definitions = _shader_definitions_missing()
    compliance = hasattr(UsdUtils, "ComplianceChecker")
    if compliance:
        checker = UsdUtils.ComplianceChecker(arkit=True, skipARKitRootLayerCheck=False, rootPackageOnly=False,
                                             skipVariants=False)
        checker.CheckCompliance(str(path))
        errors += [f"ComplianceChecker: {message}" for message in [*checker.GetErrors(), *checker.GetFailedChecks()]
                   if not (no_definitions and _NO_SHADER_DEFINITION in message)]
    validators = _registered_validators()
    if validators:
        from pxr import UsdValidation

        found = UsdValidation.ValidationContext(validators).Validate(Usd.Stage.Open(str(path)))
        errors += [f"{error.GetName()}: {error.GetMessage()}" for error in found
                   if error.GetType() == UsdValidation.ValidationErrorType.Error]
    if not compliance and not validators:
        pytest.skip("this usd-core has neither UsdUtils.ComplianceChecker nor loadable UsdValidation validators")
    return errors
