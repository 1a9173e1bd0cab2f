using Fabric.Dashboard.Services;
using Microsoft.AspNetCore.Components;

namespace Fabric.Dashboard.Components.Shared;

/// <summary>
/// A page that reads the control plane and refreshes itself every second while it is open (no reload): what an operator
/// watches changes in place. A control plane that does not answer is said on the page, not thrown.
/// </summary>
public abstract class LivePage : ComponentBase, IDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private bool _looping;

    /// <summary>The fleet as the control plane knows it (every live page reads some of it).</summary>
    [Inject]
    protected FleetService Fleet { get; set; } = default!;

    /// <summary>Why the last refresh failed; null when it worked.</summary>
    protected string? LoadError { get; private set; }

    protected bool Loaded { get; private set; }

    /// <summary>Reads what the page shows.</summary>
    protected abstract Task LoadAsync();

    protected override async Task OnParametersSetAsync()
    {
        await RefreshAsync();
        if (RendererInfo.IsInteractive && !_looping)
        {
            _looping = true;
            _ = LoopAsync();
        }
    }

    protected async Task RefreshAsync()
    {
        try
        {
            await LoadAsync().WaitAsync(TimeSpan.FromSeconds(10));
            LoadError = null;
            Loaded = true;
        }
        catch (Exception e) when (e is OrleansException or TimeoutException or InvalidOperationException)
        {
            LoadError = $"The control plane does not answer: {e.Message}";
        }
    }

    private async Task LoopAsync()
    {
        using var timer = new PeriodicTimer(TimeSpan.FromSeconds(1));
        try
        {
            while (await timer.WaitForNextTickAsync(_stop.Token))
            {
                await InvokeAsync(async () =>
                {
                    await RefreshAsync();
                    StateHasChanged();
                });
            }
        }
        catch (OperationCanceledException)
        {
        }
        catch (ObjectDisposedException)
        {
        }
    }

    public void Dispose()
    {
        _stop.Cancel();
        _stop.Dispose();
        GC.SuppressFinalize(this);
    }
}
