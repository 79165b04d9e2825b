"""Small objects of the IODs de-identification must keep whole (issue 14, kinds 4-6).

Each builder returns a whole object (File Meta, fake patient details, pixel data where the IOD
has it) with identifiers placed where real archives put them: inside functional groups, in
private blocks of functional group items, in observer sequences of structured reports. All
values are made up. ``write`` saves one under a folder for a run or ``ridl deid``.
"""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
NM_IMAGE = "1.2.840.10008.5.1.4.1.1.20"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"

# The made-up identifiers every builder plants; none may reach an output.
PHI = ("Gagnon^Marie", "MRN-55012", "ACC-88231", "Clinique Ouest", "Fortin^Luc", "19581203")
PATIENT_NAME, PATIENT_ID, ACCESSION, INSTITUTION, OBSERVER, BIRTH_DATE = PHI


def _item(**values: object) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    return _item(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


def _base(
    sop_class: str, modality: str, *, site: str = "SITE-A", implicit: bool = False
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyDate = "20200115"
    ds.StudyTime = "101500"
    ds.ContentDate = "20200115"
    ds.ContentTime = "101600"
    ds.AccessionNumber = ACCESSION
    ds.Modality = modality
    ds.Manufacturer = "ACME"
    ds.InstitutionName = INSTITUTION
    ds.ReferringPhysicianName = OBSERVER
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.IssuerOfPatientID = site
    ds.PatientBirthDate = BIRTH_DATE
    ds.PatientSex = "F"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyID = "S1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    return ds


def _pixels(ds: Dataset, rows: int, columns: int, frames: int, bits: int = 16) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = bits
    ds.BitsStored = bits if bits == 8 else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if frames > 1 or "NumberOfFrames" in ds:
        ds.NumberOfFrames = frames
    ds.PixelData = bytes(rows * columns * frames * bits // 8)


def _enhanced_common(ds: Dataset, frames: int) -> None:
    """Modules shared by Enhanced MR and Enhanced CT: equipment, frame of reference, groups."""
    ds.ManufacturerModelName = "Model X"
    ds.DeviceSerialNumber = "SN-77421"
    ds.SoftwareVersions = "VX1"
    ds.FrameOfReferenceUID = generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.AcquisitionNumber = 1
    ds.AcquisitionDateTime = "20200115101500"
    ds.AcquisitionDuration = 30.0
    ds.ContentQualification = "PRODUCT"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.AcquisitionContextSequence = Sequence()
    ds.ReferencedStudySequence = Sequence(
        [
            _item(
                ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1",
                ReferencedSOPInstanceUID=generate_uid(),
            )
        ]
    )
    organization = generate_uid()
    ds.DimensionOrganizationSequence = Sequence([_item(DimensionOrganizationUID=organization)])
    ds.DimensionOrganizationType = "3D"
    ds.DimensionIndexSequence = Sequence(
        [
            _item(
                DimensionOrganizationUID=organization,
                DimensionIndexPointer=Tag("StackID"),
                FunctionalGroupPointer=Tag("FrameContentSequence"),
            ),
            _item(
                DimensionOrganizationUID=organization,
                DimensionIndexPointer=Tag("InStackPositionNumber"),
                FunctionalGroupPointer=Tag("FrameContentSequence"),
            ),
        ]
    )
    shared = _item(
        PixelMeasuresSequence=Sequence(
            [_item(PixelSpacing=[0.5, 0.5], SliceThickness=1.0, SpacingBetweenSlices=1.0)]
        ),
        PlaneOrientationSequence=Sequence([_item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])]),
        FrameAnatomySequence=Sequence(
            [
                _item(
                    FrameLaterality="U",
                    AnatomicRegionSequence=Sequence([_code("T-D3000", "SRT", "Chest")]),
                )
            ]
        ),
        PixelValueTransformationSequence=Sequence(
            [_item(RescaleIntercept=0, RescaleSlope=1, RescaleType="US")]
        ),
        FrameVOILUTSequence=Sequence([_item(WindowCenter=40, WindowWidth=400)]),
    )
    # Identifiers where vendors put them: a private block and a public name inside a group.
    shared.add_new(0x00290010, "LO", "ACME 1.1")
    shared.add_new(0x00291010, "LO", PATIENT_NAME)
    shared.OperatorsName = OBSERVER
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for index in range(frames):
        item = _item(
            FrameContentSequence=Sequence(
                [
                    _item(
                        FrameAcquisitionNumber=1,
                        FrameReferenceDateTime="20200115101500",
                        FrameAcquisitionDateTime="20200115101500",
                        FrameAcquisitionDuration=10.0,
                        StackID="1",
                        InStackPositionNumber=index + 1,
                        DimensionIndexValues=[1, index + 1],
                        FrameComments=f"{PATIENT_NAME} frame",
                    )
                ]
            ),
            PlanePositionSequence=Sequence([_item(ImagePositionPatient=[0, 0, float(index)])]),
        )
        item.add_new(0x00290010, "LO", "ACME 1.1")
        item.add_new(0x00291011, "LO", PATIENT_ID)
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.InstanceNumber = 1


def enhanced_mr(frames: int = 2, *, implicit: bool = False) -> Dataset:
    """An Enhanced MR Image (PS3.3 A.36.2) with its functional groups and dimensions."""
    ds = _base(ENHANCED_MR, "MR", implicit=implicit)
    _enhanced_common(ds, frames)
    ds.AcquisitionContrast = "T1"
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.ComplexImageComponent = "MAGNITUDE"
    ds.ResonantNucleus = "1H"
    ds.KSpaceFiltering = "NONE"
    ds.MagneticFieldStrength = 3
    ds.ImageComments = f"{PATIENT_NAME} research scan"
    ds.PulseSequenceName = "SE2D"
    ds.MRAcquisitionType = "2D"
    ds.EchoPulseSequence = "SPIN"
    ds.MultipleSpinEcho = "NO"
    ds.MultiPlanarExcitation = "NO"
    ds.PhaseContrast = "NO"
    ds.TimeOfFlightContrast = "NO"
    ds.SteadyStatePulseSequence = "NONE"
    ds.EchoPlanarPulseSequence = "NO"
    ds.SaturationRecovery = "NO"
    ds.SpectrallySelectedSuppression = "NONE"
    ds.OversamplingPhase = "NONE"
    ds.GeometryOfKSpaceTraversal = "RECTILINEAR"
    ds.RectilinearPhaseEncodeReordering = "LINEAR"
    ds.SegmentedKSpaceTraversal = "SINGLE"
    ds.CoverageOfKSpace = "FULL"
    ds.NumberOfKSpaceTrajectories = 1
    shared = ds.SharedFunctionalGroupsSequence[0]
    shared.MRImageFrameTypeSequence = Sequence(
        [
            _item(
                FrameType=["ORIGINAL", "PRIMARY", "VOLUME", "NONE"],
                PixelPresentation="MONOCHROME",
                VolumetricProperties="VOLUME",
                VolumeBasedCalculationTechnique="NONE",
                ComplexImageComponent="MAGNITUDE",
                AcquisitionContrast="T1",
            )
        ]
    )
    shared.MRTimingAndRelatedParametersSequence = Sequence(
        [
            _item(
                RepetitionTime=500.0,
                FlipAngle=90.0,
                EchoTrainLength=1,
                RFEchoTrainLength=1,
                GradientEchoTrainLength=0,
                GradientOutputType="DB_DT",
                SpecificAbsorptionRateSequence=Sequence(
                    [
                        _item(
                            SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY",
                            SpecificAbsorptionRateValue=0.5,
                        )
                    ]
                ),
                OperatingModeSequence=Sequence(
                    [_item(OperatingModeType="STATIC FIELD", OperatingMode="IEC_NORMAL")]
                ),
            )
        ]
    )
    shared.MRFOVGeometrySequence = Sequence(
        [
            _item(
                InPlanePhaseEncodingDirection="ROW",
                MRAcquisitionFrequencyEncodingSteps=4,
                MRAcquisitionPhaseEncodingStepsInPlane=4,
                PercentSampling=100.0,
                PercentPhaseFieldOfView=100.0,
            )
        ]
    )
    shared.MREchoSequence = Sequence([_item(EffectiveEchoTime=15.0)])
    shared.MRModifierSequence = Sequence(
        [
            _item(
                InversionRecovery="NO",
                FlowCompensation="NONE",
                T2Preparation="NO",
                SpectrallySelectedExcitation="NONE",
                SpatialPresaturation="NONE",
                PartialFourier="NO",
                ParallelAcquisition="NO",
            )
        ]
    )
    shared.MRImagingModifierSequence = Sequence(
        [
            _item(
                MagnetizationTransfer="NONE",
                BloodSignalNulling="NO",
                Tagging="NONE",
                TransmitterFrequency=123.2,
                PixelBandwidth=200.0,
            )
        ]
    )
    shared.MRReceiveCoilSequence = Sequence(
        [
            _item(
                ReceiveCoilName="HEAD32",
                ReceiveCoilManufacturerName="ACME",
                ReceiveCoilType="MULTICOIL",
                QuadratureReceiveCoil="NO",
                MultiCoilDefinitionSequence=Sequence(
                    [_item(MultiCoilElementName="H1", MultiCoilElementUsed="YES")]
                ),
            )
        ]
    )
    shared.MRTransmitCoilSequence = Sequence(
        [
            _item(
                TransmitCoilName="BODY",
                TransmitCoilManufacturerName="ACME",
                TransmitCoilType="BODY",
            )
        ]
    )
    shared.MRAveragesSequence = Sequence([_item(NumberOfAverages=1)])
    for item in ds.PerFrameFunctionalGroupsSequence:
        item.MRDiffusionSequence = Sequence(
            [_item(DiffusionBValue=0.0, DiffusionDirectionality="NONE")]
        )
    _pixels(ds, 4, 4, frames)
    return ds


def enhanced_ct(frames: int = 2) -> Dataset:
    """An Enhanced CT Image (PS3.3 A.38.1) with its functional groups and dimensions."""
    ds = _base(ENHANCED_CT, "CT")
    _enhanced_common(ds, frames)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    shared = ds.SharedFunctionalGroupsSequence[0]
    shared.CTImageFrameTypeSequence = Sequence(
        [
            _item(
                FrameType=["ORIGINAL", "PRIMARY", "AXIAL", "NONE"],
                PixelPresentation="MONOCHROME",
                VolumetricProperties="VOLUME",
                VolumeBasedCalculationTechnique="NONE",
            )
        ]
    )
    shared.CTAcquisitionTypeSequence = Sequence(
        [_item(AcquisitionType="SPIRAL", ConstantVolumeFlag="NO", FluoroscopyFlag="NO")]
    )
    shared.CTAcquisitionDetailsSequence = Sequence(
        [
            _item(
                DataCollectionDiameter=500.0,
                GantryDetectorTilt=0.0,
                TableHeight=150.0,
                RotationDirection="CW",
                RevolutionTime=0.5,
                SingleCollimationWidth=0.6,
                TotalCollimationWidth=38.4,
            )
        ]
    )
    shared.CTTableDynamicsSequence = Sequence(
        [_item(TableSpeed=50.0, TableFeedPerRotation=25.0, SpiralPitchFactor=1.0)]
    )
    shared.CTGeometrySequence = Sequence(
        [_item(DistanceSourceToDetector=1000.0, DistanceSourceToDataCollectionCenter=550.0)]
    )
    shared.CTReconstructionSequence = Sequence(
        [
            _item(
                ReconstructionAlgorithm="FILTER_BACK_PROJ",
                ConvolutionKernel="B30f",
                ConvolutionKernelGroup="SOFT_TISSUE",
                ReconstructionDiameter=350.0,
                ReconstructionFieldOfView=[350.0, 350.0],
                ReconstructionPixelSpacing=[0.5, 0.5],
                ReconstructionAngle=0.0,
                ImageFilter="NONE",
            )
        ]
    )
    shared.CTExposureSequence = Sequence(
        [
            _item(
                ExposureTimeInms=500.0,
                XRayTubeCurrentInmA=200.0,
                ExposureInmAs=100.0,
                ExposureModulationType="NONE",
                CTDIvol=10.0,
            )
        ]
    )
    shared.CTXRayDetailsSequence = Sequence(
        [
            _item(
                KVP=120,
                FocalSpots=[1.2],
                FilterType="FLAT",
                FilterMaterial=["AL"],
                CalciumScoringMassFactorPatient=0.7,
                CalciumScoringMassFactorDevice=[0.7, 0.7, 0.7],
            )
        ]
    )
    for item in ds.PerFrameFunctionalGroupsSequence:
        item.CTPositionSequence = Sequence(
            [
                _item(
                    TablePosition=0.0,
                    DataCollectionCenterPatient=[0, 0, 0],
                    ReconstructionTargetCenterPatient=[0, 0, 0],
                )
            ]
        )
    _pixels(ds, 4, 4, frames)
    return ds


def nm_multiframe(frames: int = 2, *, private_pointer: bool = False) -> Dataset:
    """An NM Image (PS3.3 A.5) whose Frame Increment Pointer names its frame vectors."""
    ds = _base(NM_IMAGE, "NM")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "STATIC", "EMISSION"]
    ds.FrameOfReferenceUID = generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.NumberOfFrames = frames
    pointers = [Tag("EnergyWindowVector"), Tag("DetectorVector")]
    if private_pointer:
        pointers.append(Tag(0x00291001))
        ds.add_new(0x00290010, "LO", "ACME 1.1")
        ds.add_new(0x00291001, "US", list(range(1, frames + 1)))
    ds.FrameIncrementPointer = pointers
    ds.NumberOfEnergyWindows = 1
    ds.EnergyWindowVector = [1] * frames
    ds.NumberOfDetectors = frames
    ds.DetectorVector = list(range(1, frames + 1))
    ds.PatientOrientationCodeSequence = Sequence([_code("F-10450", "SRT", "recumbent")])
    ds.PatientGantryRelationshipCodeSequence = Sequence([_code("F-10470", "SRT", "headfirst")])
    ds.EnergyWindowInformationSequence = Sequence(
        [
            _item(
                EnergyWindowRangeSequence=Sequence(
                    [_item(EnergyWindowLowerLimit=126, EnergyWindowUpperLimit=154)]
                )
            )
        ]
    )
    ds.RadiopharmaceuticalInformationSequence = Sequence(
        [
            _item(
                RadionuclideCodeSequence=Sequence([_code("C-163A8", "SRT", "Technetium Tc^99m^")]),
                RadionuclideTotalDose=740,
            )
        ]
    )
    ds.DetectorInformationSequence = Sequence(
        [
            _item(
                CollimatorType="PARA",
                ImagePositionPatient=[0, 0, 0],
                ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
            )
            for _ in range(frames)
        ]
    )
    ds.PixelSpacing = [2.0, 2.0]
    ds.SliceThickness = 2.0
    _pixels(ds, 4, 4, frames)
    ds.BitsStored = 16
    ds.HighBit = 15
    return ds


def dx_image() -> Dataset:
    """A DX Image For Presentation (PS3.3 A.26) with its detector and positioning modules."""
    ds = _base(DX_PRESENTATION, "DX")
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImagerPixelSpacing = [0.1, 0.1]
    ds.DetectorType = "SCINTILLATOR"
    ds.DetectorID = "DET-0042"
    ds.PositionerType = "NONE"
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PatientOrientation = ["L", "F"]
    ds.ViewPosition = "PA"
    ds.AnatomicRegionSequence = Sequence([_code("T-D3000", "SRT", "Chest")])
    ds.AcquisitionContextSequence = Sequence()
    ds.KVP = 120
    _pixels(ds, 4, 4, 1)
    return ds


def mr_image() -> Dataset:
    """An MR Image (PS3.3 A.4) with the MR Image module's Type 1 and 2 attributes."""
    ds = _base(MR_IMAGE, "MR")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.FrameOfReferenceUID = generate_uid()
    ds.PositionReferenceIndicator = "XY"
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime = 500.0
    ds.EchoTime = 15.0
    ds.EchoTrainLength = 1
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 1.0
    ds.ReferencedStudySequence = Sequence(
        [
            _item(
                ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1",
                ReferencedSOPInstanceUID=generate_uid(),
            )
        ]
    )
    _pixels(ds, 4, 4, 1)
    return ds


def us_multiframe(*, private_pointer: bool = False) -> Dataset:
    """An Ultrasound Multi-frame Image (PS3.3 A.7) whose Frame Increment Pointer names
    Frame Time, and optionally also a private attribute the plan removes."""
    ds = _base(US_MULTIFRAME, "US")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "", ""]
    ds.PatientOrientation = ""
    ds.FrameTime = 33.3
    pointers = [Tag("FrameTime")]
    if private_pointer:
        ds.add_new(0x00290010, "LO", "ACME 1.1")
        ds.add_new(0x00291001, "DS", "33.3")
        pointers.append(Tag(0x00291001))
    ds.FrameIncrementPointer = pointers if len(pointers) > 1 else pointers[0]
    ds.NumberOfFrames = 2
    _pixels(ds, 4, 4, 2, bits=8)
    return ds


def comprehensive_sr(*, verified: bool = True) -> Dataset:
    """A Comprehensive SR (PS3.3 A.35.3) with observer names, required code sequences and a
    reference to the image it reports on. No pixel data."""
    ds = _base(COMPREHENSIVE_SR, "SR")
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = Sequence([_code("18748-4", "LN", "Diagnostic Imaging Report")])
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "VERIFIED" if verified else "UNVERIFIED"
    if verified:
        ds.VerifyingObserverSequence = Sequence(
            [
                _item(
                    VerifyingObserverName=OBSERVER,
                    VerifyingOrganization=INSTITUTION,
                    VerificationDateTime="20200116090000",
                    VerifyingObserverIdentificationCodeSequence=Sequence(
                        [_code("EMP-7781", "99HOSP", OBSERVER)]
                    ),
                )
            ]
        )
    ds.PerformedProcedureCodeSequence = Sequence([_code("24627-2", "LN", "CT Chest")])
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    image = generate_uid()
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence(
        [
            _item(
                StudyInstanceUID=ds.StudyInstanceUID,
                ReferencedSeriesSequence=Sequence(
                    [
                        _item(
                            SeriesInstanceUID=generate_uid(),
                            ReferencedSOPSequence=Sequence(
                                [
                                    _item(
                                        ReferencedSOPClassUID="1.2.840.10008.5.1.4.1.1.2",
                                        ReferencedSOPInstanceUID=image,
                                    )
                                ]
                            ),
                        )
                    ]
                ),
            )
        ]
    )
    finding = _item(
        RelationshipType="CONTAINS",
        ValueType="TEXT",
        ConceptNameCodeSequence=Sequence([_code("121071", "DCM", "Finding")]),
        TextValue=f"Nodule seen by {OBSERVER} at {INSTITUTION}",
    )
    ref = _item(
        RelationshipType="CONTAINS",
        ValueType="IMAGE",
        ReferencedSOPSequence=Sequence(
            [
                _item(
                    ReferencedSOPClassUID="1.2.840.10008.5.1.4.1.1.2",
                    ReferencedSOPInstanceUID=image,
                )
            ]
        ),
    )
    ds.ContentSequence = Sequence([finding, ref])
    return ds


def write(ds: Dataset, folder: Path, name: str) -> Path:
    """Save ``ds`` as ``folder/name.dcm`` (folder created) and return the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.dcm"
    implicit = ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    return path


# name -> builder of every variant the corpus and the kind tests use.
VARIANTS = {
    "enhanced-mr": lambda: enhanced_mr(),
    "enhanced-mr-implicit": lambda: enhanced_mr(3, implicit=True),
    "enhanced-mr-1frame": lambda: enhanced_mr(1),
    "enhanced-ct": lambda: enhanced_ct(),
    "nm": lambda: nm_multiframe(),
    "nm-private-pointer": lambda: nm_multiframe(private_pointer=True),
    "dx": dx_image,
    "mr": mr_image,
    "us-multiframe": lambda: us_multiframe(),
    "us-private-pointer": lambda: us_multiframe(private_pointer=True),
    "sr": lambda: comprehensive_sr(),
    "sr-unverified": lambda: comprehensive_sr(verified=False),
}
