import torch
from skimage import data
from torch import nn
from torch.utils.data import DataLoader

import cdcompress
from cdcompress.evaluation.metrics import psnr


class Encoder(nn.Module):  # your encoder: any nn.Module; several outputs (U-Net skips) are fine
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU())
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * width), nn.SiLU())

    def forward(self, x):
        skip = self.stem(x)
        return skip, self.down(skip)


class Decoder(nn.Module):  # your decoder: consumes whatever the encoder returns
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.fuse = nn.Sequential(nn.Conv2d(2 * width, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU())
        self.head = nn.Conv2d(width, 3, 1)

    def forward(self, features):
        skip, bottom = features
        return self.head(self.fuse(torch.cat([self.up(bottom), skip], dim=1)))


# Training images: any iterable of [N, 3, H, W] batches in [0, 1] (here 64x64 crops of one photo).
photo = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float() / 255
crops = torch.stack([photo[:, y : y + 64, x : x + 64] for y in range(0, 448, 32) for x in range(0, 448, 32)])
loader = DataLoader(crops, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))

# Your trained teacher pair (trained here for a few seconds so the example runs on its own).
torch.manual_seed(0)
encoder, decoder = Encoder(), Decoder()
optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=2e-3)
for _epoch in range(12):  # 12 epochs x 25 batches
    for batch in loader:
        loss = nn.functional.mse_loss(decoder(encoder(batch)), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

d = cdcompress.apply(encoder, decoder, slim=0.5)  # student = teacher at half width, collaborator frozen
print(d.slimmed.summary())  # per-layer widths, encoder and decoder parameter ratios
d.fit(loader, cdcompress.TrainConfig(steps=300, lr=1e-3))  # stage 2: collaborative distillation
small, _ = d.fit_decoder(loader, cdcompress.TrainConfig(steps=300, lr=1e-3))  # stage 3: the student's decoder
d.save_student("out/student", decoder=small, overwrite=True)  # model.json + safetensors, slimmed widths recorded
m = cdcompress.load("out/student", encoder=Encoder, decoder=Decoder)  # factories of the teacher's shapes
cdcompress.export.export_bundle(m, "out/bundle", overwrite=True)  # ONNX graphs, parity-checked on onnxruntime
with torch.no_grad():
    restored = m.decoder()(m.encoder()(photo[None])).clamp(0, 1)
print("student PSNR on the training photo:", psnr(restored, photo[None]))
